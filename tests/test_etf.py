from __future__ import annotations

import pytest
import torch

from mlcnc.etf import simplex_etf


@pytest.mark.parametrize(("dim", "num_classes"), [(2, 2), (20, 20), (768, 80), (400, 20)])
def test_gram_matrix_is_simplex(dim: int, num_classes: int) -> None:
    etf = simplex_etf(dim, num_classes, torch.Generator().manual_seed(0))
    assert etf.shape == (dim, num_classes)
    assert etf.dtype == torch.float32
    gram = (etf.T @ etf).double()
    off = -1.0 / (num_classes - 1)
    expected = torch.full((num_classes, num_classes), off, dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, atol=1e-5, rtol=0)
    # Columns sum to zero: the simplex is centred.
    torch.testing.assert_close(etf.sum(dim=1), torch.zeros(dim), atol=1e-5, rtol=0)


def test_seeded_generator_is_reproducible_and_seeds_differ() -> None:
    a = simplex_etf(64, 10, torch.Generator().manual_seed(3))
    b = simplex_etf(64, 10, torch.Generator().manual_seed(3))
    c = simplex_etf(64, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_matches_the_formula_from_a_qr_of_a_uniform_draw() -> None:
    generator = torch.Generator().manual_seed(7)
    draw = torch.rand(30, 6, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(draw)
    expected = (6 / 5) ** 0.5 * q @ (torch.eye(6, dtype=torch.float64) - torch.ones(6, 6) / 6)
    torch.testing.assert_close(
        simplex_etf(30, 6, torch.Generator().manual_seed(7)), expected.float()
    )


@pytest.mark.parametrize(
    ("dim", "num_classes", "message"), [(5, 6, "dim >= num_classes"), (4, 1, "num_classes >= 2")]
)
def test_bad_sizes_raise(dim: int, num_classes: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simplex_etf(dim, num_classes)
