"""Collection policy (征缴政策): policy files per district and year, and the assessment engine.

Usage::

    policy = load_policy("shanting-2021")
    result = assess(policy, facts, now)
"""

from backend.policy.engine import (
    INSURANCES,
    Assessment,
    Insurance,
    MedicalAssessment,
    PensionAssessment,
    ResidentFacts,
    TierOption,
    assess,
)
from backend.policy.loader import (
    BUSINESS_TZ,
    CATEGORIES,
    DEPARTMENTS,
    HUKOU_TYPES,
    POLICY_DIR,
    AgeRule,
    Deadlines,
    PensionTarget,
    Policy,
    PolicyError,
    Stage,
    SubsidyBand,
    Targets,
    WindowState,
    business_today,
    clear_policy_cache,
    load_policy,
    policy_for_year,
)

__all__ = [
    "BUSINESS_TZ", "CATEGORIES", "DEPARTMENTS", "HUKOU_TYPES", "INSURANCES", "POLICY_DIR",
    "AgeRule", "Assessment", "Deadlines", "Insurance", "MedicalAssessment", "PensionAssessment",
    "PensionTarget", "Policy", "PolicyError", "ResidentFacts", "Stage", "SubsidyBand", "Targets",
    "TierOption", "WindowState", "assess", "business_today", "clear_policy_cache", "load_policy",
    "policy_for_year",
]
