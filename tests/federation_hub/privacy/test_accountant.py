import pytest

from federation_hub.privacy.accountant import BudgetExhausted, charge, epsilon_spent


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert epsilon_spent([], 1e-5) == 0.0
    one, two = epsilon_spent([8.0], 1e-5), epsilon_spent([8.0, 8.0], 1e-5)
    assert 0 < one < two
    assert epsilon_spent([4.0], 1e-5) > one
    assert 0.4 < one < 0.6  # RDP Gaussian, σ = 8, δ = 1e-5 (≈ 0.48)


def test_budget_is_enforced():
    spent = []
    for _ in range(3):  # σ = 8: three contributions fit in ε = 1
        charge(spent, 8.0, 1e-5, 1.0)
        spent.append(8.0)
    with pytest.raises(BudgetExhausted, match="over the budget"):
        charge(spent, 8.0, 1e-5, 1.0)
