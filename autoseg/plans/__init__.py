"""Planning: nnU-Net's fingerprint and plans, plus autoseg's budget configurations on top of them."""

from autoseg.plans.budget import BUDGETS, Budget, add_budget_configuration, budget_configuration_name

__all__ = ["BUDGETS", "Budget", "add_budget_configuration", "budget_configuration_name"]
