"""The `CreditBudget` resource: a platform admin's credit limit for one tenant (namespace).

Contract: specs/CORE-001-resources.md, section "CreditBudget".

Every amount is an integer number of credits. The gateway is the only writer of the
accounting fields of the status (spent, reserved, leases, period bounds, thresholds crossed,
ledger head); the budget reconciler is the only writer of conditions. Each field has exactly
one writer, so compare-and-swap updates from many gateway replicas never fight.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from .common import (
    AGE_COLUMN,
    CONDITIONS_LIST_SCHEMA,
    AwareDatetime,
    CelRule,
    Condition,
    ContentHash,
    Credits,
    PrinterColumn,
    Resource,
    WireModel,
)

KIND = "CreditBudget"
PLURAL = "creditbudgets"
MAX_RESERVATIONS = 256
MAX_MODEL_PATTERNS = 64
MAX_RETENTION_SECONDS = 100 * 366 * 86400
"""A century: lifetimes are bounded so that deadline arithmetic never overflows."""


class ConditionType(StrEnum):
    """Condition types a CreditBudget reports."""

    READY = "Ready"
    """The budget is valid and its accounting is current."""
    BUDGET_EXHAUSTED = "BudgetExhausted"
    """No credits remain in the current period: model calls are refused (Enforce mode)."""
    THRESHOLD_REACHED = "ThresholdReached"
    """Spending crossed a soft threshold of the limit in the current period."""


class Reason(StrEnum):
    """Reasons of CreditBudget conditions (PascalCase, stable)."""

    ACCOUNTING_CURRENT = "AccountingCurrent"
    INVALID_TIME_ZONE = "InvalidTimeZone"
    """spec.period.timeZone names no IANA time zone (a check the CRD schema cannot make)."""
    INVALID = "Invalid"
    """The API server admitted a budget the operator's types refuse; the message says why."""
    LIMIT_REACHED = "LimitReached"
    CREDITS_AVAILABLE = "CreditsAvailable"
    THRESHOLD_CROSSED = "ThresholdCrossed"
    BELOW_THRESHOLDS = "BelowThresholds"
    PERIOD_ROLLED_OVER = "PeriodRolledOver"


class PeriodType(StrEnum):
    """How often the limit resets."""

    DAILY = "Daily"
    WEEKLY = "Weekly"
    MONTHLY = "Monthly"
    LIFETIME = "Lifetime"
    """Never resets: the limit covers all time."""


class EnforcementMode(StrEnum):
    """What the gateway does when a call would exceed the budget."""

    ENFORCE = "Enforce"
    """Refuse the call (HTTP 402) before any provider is contacted."""
    SHADOW = "Shadow"
    """Allow the call, but record the would-be refusal in the ledger, metrics and Events."""


class Period(WireModel):
    """The accounting period of the limit."""

    type: PeriodType = PeriodType.MONTHLY
    """Daily, Weekly, Monthly or Lifetime."""
    time_zone: str = Field(
        default="UTC", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$"
    )
    """IANA time zone in which periods start at midnight, e.g. Europe/Berlin."""

    @field_validator("time_zone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown IANA time zone {value!r}") from error
        return value


class ModelPolicy(WireModel):
    """Which models the tenant may call. Patterns are shell globs; deny wins over allow."""

    allow: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default=["*"],
        max_length=MAX_MODEL_PATTERNS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Allowed model patterns, e.g. gpt-4o-mini or local/*; default: every model."""
    deny: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=MAX_MODEL_PATTERNS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Denied model patterns; a model matching any is refused."""


ThresholdPercent = Annotated[int, Field(ge=1, le=100, strict=True)]
RetentionSeconds = Annotated[int, Field(ge=0, le=MAX_RETENTION_SECONDS, strict=True)]


class RetentionPolicy(WireModel):
    """How long a tenant's finished runs and their stored data are kept (CORE-001
    "Retention"). A budget with this block states the whole policy: a lifetime it leaves out
    is forever. A budget without one follows the installation's defaults (the chart's
    `retention` values). The ledger, attestations and Spec snapshots are never deleted."""

    succeeded_run_seconds: RetentionSeconds | None = None
    """A Succeeded GenerationRun is deleted this long after it finished (with its files)."""
    failed_run_seconds: RetentionSeconds | None = None
    """A Failed GenerationRun is deleted this long after it finished (with its files)."""
    artifact_seconds: RetentionSeconds | None = None
    """A finished run's files, manifests, feedback and test reports are deleted this long
    after it finished, even while the run object is kept; its attestation stays."""
    transcript_seconds: RetentionSeconds | None = None
    """Model-call transcripts are deleted this long after they were written; replaying a
    run needs them."""


class CreditBudgetSpec(WireModel):
    """A tenant's credit limit per period, cap per run, model policy and enforcement mode."""

    limit_credits: Credits
    """Credits the namespace may spend per period."""
    # Built without validation: validating the default would load the UTC zone from the tz
    # database at import, and the sandbox images, which import this module, have none.
    period: Period = Period.model_construct()
    """When the limit resets, and in which time zone."""
    per_run_limit_credits: Credits | None = None
    """Most credits one GenerationRun may spend; at most limitCredits."""
    soft_thresholds_percent: list[ThresholdPercent] = Field(
        default=[80, 95],
        max_length=10,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Percentages of the limit that raise a ThresholdReached condition, Event and metric."""
    models: ModelPolicy = ModelPolicy()
    """Allowed and denied models."""
    enforcement: EnforcementMode = EnforcementMode.ENFORCE
    """Enforce refuses calls over budget; Shadow lets them through and records them."""
    retention: RetentionPolicy | None = None
    """How long the tenant's finished runs, files and transcripts are kept; absent: the
    installation's defaults. Applies to the runs that charge this budget."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.perRunLimitCredits) || self.perRunLimitCredits <= self.limitCredits",
            message="perRunLimitCredits must not exceed limitCredits",
            field_path=".perRunLimitCredits",
        ),
    )

    @model_validator(mode="after")
    def _per_run_within_limit(self) -> CreditBudgetSpec:
        if self.per_run_limit_credits is not None and (
            self.per_run_limit_credits > self.limit_credits
        ):
            raise ValueError("perRunLimitCredits must not exceed limitCredits")
        return self

    @field_validator("soft_thresholds_percent")
    @classmethod
    def _thresholds_unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("softThresholdsPercent must not repeat a value")
        return value


class Reservation(WireModel):
    """A lease: credits one gateway replica holds for its calls in flight and the next few.

    A replica reserves each call's worst-case cost against its own lease in memory and
    settles the actual cost into spentCredits in batches, so one compare-and-swap covers
    many calls while spent + reserved never exceeds the limit.
    """

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Lease id: the holding gateway replica's id."""
    holder: str = Field(max_length=253)
    """Gateway replica (pod name) that holds the lease."""
    credits: Credits
    """Credits held: worst-case cost of the holder's calls in flight plus its headroom."""
    expires_at: AwareDatetime
    """When the lease lapses unless renewed; a lapsed lease is charged as spent, because a
    holder that died mid-call may have been billed for calls it never settled."""


class LedgerHead(WireModel):
    """The tip of the budget's hash-chained, append-only ledger."""

    sequence: int = Field(ge=0)
    """Number of the last entry."""
    hash: ContentHash
    """Hash of the last entry, chaining every earlier one."""
    segment_uri: str | None = Field(default=None, max_length=1024)
    """S3 URI of the segment holding the last entry."""


class CreditBudgetStatus(WireModel):
    """Observed state of a budget; see the module docstring for who writes what."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the conditions describe."""
    spent_credits: Credits = 0
    """Credits settled in the current period; equals the ledger's sum for it."""
    reserved_credits: Credits = 0
    """Credits held by calls in flight; spent + reserved never exceeds the limit."""
    remaining_credits: Credits | None = None
    """limitCredits - spentCredits - reservedCredits, for printer columns."""
    period_start: AwareDatetime | None = None
    """Start of the current period."""
    period_end: AwareDatetime | None = None
    """End of the current period (exclusive); absent for Lifetime."""
    reservations: list[Reservation] = Field(
        default_factory=list,
        max_length=MAX_RESERVATIONS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
    )
    """Credit leases held by gateway replicas; reservedCredits is their sum."""
    ledger_head: LedgerHead | None = None
    """Tip of the ledger chain."""
    thresholds_crossed: list[ThresholdPercent] = Field(
        default_factory=list, max_length=10, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Soft thresholds crossed in the current period."""
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8, json_schema_extra=CONDITIONS_LIST_SCHEMA
    )
    """Ready, BudgetExhausted, ThresholdReached."""


class CreditBudget(Resource):
    """A tenant's credit budget (smartspec.dev/v1alpha1 CreditBudget)."""

    KIND: ClassVar[str] = KIND
    PLURAL: ClassVar[str] = PLURAL
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("cb", "budget")
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn("Limit", "integer", ".spec.limitCredits", "Credits per period"),
        PrinterColumn("Spent", "integer", ".status.spentCredits", "Settled this period"),
        PrinterColumn("Reserved", "integer", ".status.reservedCredits", "Held by calls in flight"),
        PrinterColumn("Remaining", "integer", ".status.remainingCredits", "Left this period"),
        PrinterColumn("Period", "string", ".spec.period.type", "Reset period"),
        PrinterColumn("Mode", "string", ".spec.enforcement", "Enforce or Shadow", priority=1),
        AGE_COLUMN,
    )

    kind: Literal["CreditBudget"]
    spec: CreditBudgetSpec
    """Limit, period, per-run cap, thresholds, model policy and enforcement mode."""
    status: CreditBudgetStatus | None = None
    """Accounting (gateway-written) and conditions (operator-written)."""
