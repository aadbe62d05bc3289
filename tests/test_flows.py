"""Flows in float64: log|det| against autograd Jacobians, inverses, autoregressive structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from flowvae.models.flows import MADE, AffineCoupling, Flow, IAFStep, Planar, Sylvester, iaf, real_nvp
from flowvae.models.flows.sylvester import householder_product, orthogonalize

D, C, N = 5, 3, 4


@pytest.fixture(autouse=True)
def float64():
    """Run every test in float64 with a fixed seed."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


def perturb(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Move every parameter away from its initial value."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def planar_context(n: int, steps: int, dim: int = D) -> torch.Tensor:
    """Random amortized planar parameters (u, w, b per step)."""
    return 1.5 * torch.randn(n, steps * (2 * dim + 1))


def flows() -> dict[str, tuple[Flow, int]]:
    """Every flow under test with random parameters, and the context size it reads."""
    return {
        "planar": (Planar(D, 3), 3 * (2 * D + 1)),
        "coupling": (perturb(AffineCoupling(D, C, 16, parity=1)), C),
        "real_nvp": (perturb(real_nvp(D, 2, C, 16)), C),
        "iaf_step": (perturb(IAFStep(D, 16, C)), C),
        "iaf_step_reversed": (perturb(IAFStep(D, 16, C, reverse=True)), C),
        "iaf": (perturb(iaf(D, 3, 16, C)), C),
        "iaf_fixed": (perturb(iaf(D, 2, 16, C, fixed_sigma=True)), C),
        "iaf_no_context": (perturb(iaf(D, 2, 16, 0)), 0),
        "iaf_two_layer_made": (perturb(iaf(D, 2, 16, C, layers=2)), C),
        "osnf": (Sylvester(D, 3, "orthogonal", columns=3), 3 * (3 * 3 + 3 * 3 + D * 3)),
        "osnf_square": (Sylvester(D, 2, "orthogonal", columns=D), 2 * (D * D + 3 * D + D * D)),
        "hsnf": (Sylvester(D, 2, "householder", reflections=3), 2 * (D * D + 3 * D + 3 * D)),
        "tsnf": (Sylvester(D, 3, "triangular"), 3 * (D * D + 3 * D)),
    }


def autograd_log_abs_det(flow: Flow, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """log|det J| per sample from the full autograd Jacobian."""
    out = []
    for zi, ci in zip(z, context):
        jac = jacobian(lambda v: flow(v[None], ci[None])[0][0], zi)
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("name", list(flows()))
def test_log_abs_det_matches_autograd_jacobian(name: str) -> None:
    flow, context_size = flows()[name]
    context = planar_context(N, 3) if name == "planar" else torch.randn(N, context_size)
    z = 2.0 * torch.randn(N, D)
    z_new, ladj = flow(z, context)
    assert z_new.shape == z.shape and ladj.shape == (N,)
    assert not torch.allclose(z_new, z), "flow acts as the identity: the test would be vacuous"
    torch.testing.assert_close(ladj, autograd_log_abs_det(flow, z, context), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", list(flows()))
def test_inverse_undoes_forward(name: str) -> None:
    flow, context_size = flows()[name]
    context = planar_context(N, 3) if name == "planar" else torch.randn(N, context_size)
    z = torch.randn(N, D)
    z_new, ladj = flow(z, context)
    z_back, ladj_inverse = flow.inverse(z_new, context)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ladj_inverse, -ladj, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ["planar", "real_nvp", "iaf", "osnf", "hsnf", "tsnf"])
def test_context_broadcasts_over_a_leading_sample_dimension(name: str) -> None:
    flow, context_size = flows()[name]
    context = planar_context(N, 3) if name == "planar" else torch.randn(N, context_size)
    z = torch.randn(7, N, D)
    z_new, ladj = flow(z, context)
    z_rep, ladj_rep = flow(z.reshape(-1, D), context.repeat(7, 1))
    torch.testing.assert_close(z_new, z_rep.view(7, N, D))
    torch.testing.assert_close(ladj, ladj_rep.view(7, N))


def test_real_nvp_transforms_every_dimension() -> None:
    flow = perturb(real_nvp(D, 1, C, 16))
    z, context = torch.randn(N, D), torch.randn(N, C)
    moved = (flow(z, context)[0] - z).abs().min(0).values
    assert (moved > 0).all()


def test_real_nvp_starts_as_identity() -> None:
    flow = real_nvp(D, 2, C, 16)
    z = torch.randn(N, D)
    z_new, ladj = flow(z, torch.randn(N, C))
    torch.testing.assert_close(z_new, z)
    torch.testing.assert_close(ladj, torch.zeros(N))


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("order", [list(range(D)), list(range(D))[::-1], [2, 0, 4, 1, 3]])
def test_made_jacobian_is_strictly_triangular_in_its_order(order: list[int], layers: int) -> None:
    made = perturb(MADE(D, 32, C, torch.tensor(order), outputs_per_dim=2, layers=layers))
    z, context = torch.randn(D), torch.randn(1, C)
    jac = jacobian(lambda v: made(v[None], context)[0], z).view(2, D, D)
    rank = torch.tensor(order)
    allowed = rank[None, :] < rank[:, None]  # output i may depend on input k iff order[k] < order[i]
    assert (jac[:, ~allowed] == 0).all()
    assert (jac[:, allowed] != 0).all()


def test_made_parameters_grow_with_layers() -> None:
    counts = [sum(p.numel() for p in MADE(D, 32, C, torch.arange(D), layers=k).parameters()) for k in (1, 2, 3)]
    assert counts[1] - counts[0] == counts[2] - counts[1] == 32 * 32 + 32  # one hidden-to-hidden layer each
    with pytest.raises(ValueError, match="hidden layer"):
        MADE(D, 32, C, torch.arange(D), layers=0)


def test_made_first_output_depends_on_context() -> None:
    made = perturb(MADE(D, 32, C, torch.arange(D)))
    z = torch.randn(1, D)
    jac = jacobian(lambda h: made(z, h[None])[0], torch.randn(C)).view(2, D, C)
    assert (jac[:, 0].abs() > 0).all()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("fixed_sigma", [False, True])
def test_iaf_step_output_depends_only_on_earlier_inputs(reverse: bool, fixed_sigma: bool) -> None:
    step = perturb(IAFStep(D, 32, C, fixed_sigma=fixed_sigma, reverse=reverse))
    z, context = torch.randn(D), torch.randn(1, C)
    jac = jacobian(lambda v: step(v[None], context)[0][0], z)
    rank = torch.arange(D).flip(0) if reverse else torch.arange(D)
    later = rank[None, :] > rank[:, None]
    assert (jac[later] == 0).all()
    assert (jac[rank[None, :] < rank[:, None]] != 0).all()
    if fixed_sigma:
        torch.testing.assert_close(jac.diagonal(), torch.ones(D))


def test_iaf_sigma_starts_close_to_one() -> None:
    step = IAFStep(D, 32, C)
    _, log_sigma = step.elementwise(torch.randn(N, D), torch.randn(N, C))
    assert log_sigma.exp().mean() > 0.7


@pytest.mark.parametrize("fixed_sigma", [False, True])
def test_iaf_step_is_sigma_z_plus_one_minus_sigma_m(fixed_sigma: bool) -> None:
    """The shared affine step reproduces the IAF update z' = sigma z + (1 - sigma) m (z + m with sigma fixed)."""
    step = perturb(IAFStep(D, 16, C, fixed_sigma=fixed_sigma))
    z, context = torch.randn(N, D), torch.randn(N, C)
    out = step.hyper.made(z, context)
    if fixed_sigma:
        expected, log_det = z + out, torch.zeros(N)
    else:
        m, s = out.chunk(2, dim=-1)
        sigma = torch.sigmoid(s)
        expected, log_det = sigma * z + (1 - sigma) * m, sigma.log().sum(-1)
    z_new, ladj = step(z, context)
    torch.testing.assert_close(z_new, expected)
    torch.testing.assert_close(ladj, log_det)


def test_iaf_reverses_order_between_steps() -> None:
    flow = iaf(D, 3, 8, C)
    assert [s.reverse for s in flow.steps] == [False, True, False]


@pytest.mark.parametrize("wu", [-1e3, -30.0, -1.0, 0.0, 5.0])
def test_planar_stays_invertible_for_adversarial_u_and_w(wu: float) -> None:
    w = torch.randn(D)
    u = wu * w / w.dot(w)  # w.u = wu, u parallel to w: the worst case
    b = torch.tensor([0.3])
    context = torch.cat([u, w, b])[None]
    flow = Planar(D, 1)
    # Walk along w through the steepest point: w.f(z) must strictly increase.
    t = torch.linspace(-3.0, 3.0, 2001)
    z = (t[:, None] - b) * w / w.dot(w)
    z_new, ladj = flow(z, context)
    projected = z_new @ w
    assert (projected.diff() > 0).all()
    assert torch.isfinite(ladj).all()
    pts = torch.randn(N, D)
    dets = torch.stack([torch.linalg.det(jacobian(lambda v: flow(v[None], context)[0][0], p)) for p in pts])
    assert (dets > 0).all()
    torch.testing.assert_close(flow(pts, context.expand(N, -1))[1], dets.log())


@pytest.mark.parametrize("name", ["osnf", "osnf_square", "hsnf", "tsnf"])
def test_sylvester_context_size_is_what_it_reads(name: str) -> None:
    flow, context_size = flows()[name]
    assert flow.context_size == context_size
    with pytest.raises(RuntimeError):
        flow(torch.randn(N, D), torch.randn(N, context_size - 1))


@pytest.mark.parametrize("shape", [(7, D, 3), (7, D, D), (2, 3, 32, 32)])
def test_orthogonalize_reaches_orthonormal_columns(shape: tuple[int, ...]) -> None:
    raw = torch.randn(*shape)
    raw[0, ..., 0] *= 1e-3  # an ill-conditioned matrix: the slowest to converge
    q = orthogonalize(raw)
    eye = torch.eye(shape[-1])
    assert (torch.linalg.matrix_norm(q.transpose(-1, -2) @ q - eye) < 1e-6).all()
    assert (torch.linalg.matrix_norm(raw.transpose(-1, -2) @ raw - eye) > 0.5).all(), "input already orthogonal"
    # It converges to the orthogonal polar factor U V^T of the input, not to any orthogonal matrix.
    u, _, vh = torch.linalg.svd(raw, full_matrices=False)
    torch.testing.assert_close(q, u @ vh, atol=1e-8, rtol=1e-8)


def test_orthogonalize_in_float32_within_its_tolerance() -> None:
    q = orthogonalize(torch.randn(50, 32, 32, dtype=torch.float32))
    err = torch.linalg.matrix_norm(q.transpose(-1, -2) @ q - torch.eye(32, dtype=torch.float32))
    assert err.max() < 1e-5


def test_householder_product_is_the_product_of_reflections() -> None:
    v = torch.randn(4, 3, D)
    q = householder_product(v)
    for b in range(4):
        expected = torch.eye(D)
        for k in range(3):
            u = v[b, k] / v[b, k].norm()
            expected = expected @ (torch.eye(D) - 2.0 * torch.outer(u, u))
        torch.testing.assert_close(q[b], expected)
    torch.testing.assert_close(q.transpose(-1, -2) @ q, torch.eye(D).expand(4, D, D))


def test_triangular_sylvester_alternates_identity_and_reversal() -> None:
    """Step 0 (Q = I) has an upper triangular Jacobian, step 1 (Q = reversal) a lower triangular one."""
    z, context = torch.randn(D), torch.randn(1, 2 * (D * D + 3 * D))
    for steps, triangle in ((1, torch.triu), (2, None)):
        flow = Sylvester(D, steps, "triangular")
        jac = jacobian(lambda v: flow(v[None], context[:, : flow.context_size])[0][0], z)
        if triangle is not None:
            torch.testing.assert_close(jac, triangle(jac))
            assert (jac - torch.diag(torch.diagonal(jac))).abs().max() > 1e-3
    second = Sylvester(D, 2, "triangular")
    first_out = Sylvester(D, 1, "triangular")(z[None], context[:, : D * D + 3 * D])[0]
    step_two = jacobian(lambda v: second._from_basis(v, None, 1), first_out[0])
    torch.testing.assert_close(step_two, torch.eye(D).flip(0))


@pytest.mark.parametrize("kind", ["orthogonal", "householder", "triangular"])
def test_sylvester_stays_invertible_for_extreme_amortized_parameters(kind: str) -> None:
    """Diagonals of R1, R2 pass through tanh, so 1 + tanh' r1 r2 > 0 whatever the encoder emits."""
    flow = Sylvester(D, 2, kind, columns=D, reflections=2)
    context = 50.0 * torch.randn(N, flow.context_size)
    z = torch.randn(N, D)
    z_new, ladj = flow(z, context)
    assert torch.isfinite(z_new).all() and torch.isfinite(ladj).all()
    torch.testing.assert_close(ladj, autograd_log_abs_det(flow, z, context), atol=1e-8, rtol=1e-8)


def test_sylvester_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="1 <= M <= z_dim"):
        Sylvester(D, 2, "orthogonal", columns=D + 1)
    with pytest.raises(ValueError, match="reflection"):
        Sylvester(D, 2, "householder", reflections=0)
