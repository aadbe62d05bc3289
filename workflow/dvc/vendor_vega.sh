#!/usr/bin/env bash
# Writes workflow/dvc/plots.html, the page `dvc plots show` fills (.dvc/config: plots.html_template), with Vega,
# Vega-Lite and Vega-Embed inlined so that it renders offline. The versions are those dvc-render's own page loads from
# a CDN (dvc_render/vega.py: vega@5.20.2, vega-lite@5.2.0, vega-embed@6.18.2), so DVC's specs render as DVC intends.
# Needs npm and the npm registry; checks each file's sha256.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A sha=(
  [vega@5.20.2]=4794d0169cb1f3ebad8117fe98ba5bd652dd725905ec0384e832391dbccb03be
  [vega-lite@5.2.0]=d73157451b3978015ab31dacd55ff90d986ab8663fc0abed50f97b3cd90002cb
  [vega-embed@6.18.2]=1ba9826431ddc9805e815ad92acc811c819f2bfd32bda2a128b8c4b5070fab5e
)
scripts=""
for package in vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2; do
  name=${package%@*}
  (cd "$work" && npm pack --silent "$package" > /dev/null && mkdir "$name" && tar -xzf "$name"-*.tgz -C "$name")
  file="$work/$name/package/build/$name.min.js"
  echo "${sha[$package]}  $file" | sha256sum --check --quiet
  scripts+="<!-- $package, build/$name.min.js, sha256 ${sha[$package]}; BSD-3-Clause, (c) University of Washington Interactive Data Lab -->"$'\n'
  scripts+="<script>"$'\n'"$(cat "$file")"$'\n'"</script>"$'\n'
done
{
  cat <<'HEAD'
<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>flowvae: dvc plots</title>
HEAD
  printf '%s' "$scripts"
  cat <<'TAIL'
<style>
  body { font-family: sans-serif; }
  table { border-spacing: 15px; }
</style>
</head>
<body>
{plot_divs}
</body>
</html>
TAIL
} > plots.html.tmp
mv plots.html.tmp plots.html
echo "wrote $(pwd)/plots.html"
