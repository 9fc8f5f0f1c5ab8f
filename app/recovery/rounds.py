"""What counts in a case's current round. A suspension, a refusal or a reopening ends a round
(`state.end_round`); evidence, verification calls and actions carry the round they were
recorded in, and only the current round's count: what came before was judged not enough, or is
what a suspect passed (a fooled agent's video call, a SIM-swapped phone)."""

from __future__ import annotations

import uuid
from itertools import combinations

from sqlalchemy import select

from app.accounts import records
from app.extensions import db
from app.recovery.models import Evidence, RecoveryCase, VerificationCall
from app.tenants.models import Tenant


def counted_evidence(case: RecoveryCase) -> list[Evidence]:
    """The acceptable evidence that counts now: only the current round's. After a suspected
    attack, a refusal or a reopening, what came before was judged not enough, or is what the
    suspect passed (a fooled agent's video call, the attacker's phone)."""
    return list(db.session.scalars(select(Evidence).where(
        Evidence.case_id == case.id, Evidence.accepted.is_(True), Evidence.round == case.round)
        .order_by(Evidence.recorded_at)).all())


def accepted_types(case: RecoveryCase) -> list[str]:
    """The acceptable evidence types recorded in the case's current round."""
    return sorted({e.type for e in counted_evidence(case)})


def required_types(case: RecoveryCase) -> int:
    """How many independent acceptable types this case needs (tenant policy)."""
    tenant = db.session.get(Tenant, case.tenant_id)
    user = records.user_by_id(case.user_id)
    assert tenant is not None
    if tenant.setting("strict_two_evidence_types"):
        return 2
    if user is not None and user.privileged and tenant.setting("privileged_requires_two_evidence_types"):
        return 2
    return 1


def _recorder(evidence: Evidence) -> str | None:
    """Who recorded it: the agent (a verification call counts as recorded by the agent who
    confirmed the code), or None for the system (an HR integration, a sign-in Rekey observed)."""
    return evidence.recorded_by_id if evidence.recorded_by_type == "agent" else None


def two_people(evidence: list[Evidence]) -> bool:
    """Two independent types recorded by two different people, or one of them by the system:
    one senior admin alone must not satisfy both halves of a privileged user's evidence."""
    return any(a.type != b.type and (_recorder(a) is None or _recorder(b) is None or _recorder(a) != _recorder(b))
               for a, b in combinations(evidence, 2))


def evidence_sufficient(case: RecoveryCase) -> bool:
    """Whether the current round's evidence meets the tenant's policy for this user."""
    evidence = counted_evidence(case)
    needed = required_types(case)
    if len({e.type for e in evidence}) < needed:
        return False
    user = records.user_by_id(case.user_id)
    return not (needed >= 2 and user is not None and user.privileged) or two_people(evidence)


def verified_phone(case: RecoveryCase) -> uuid.UUID | None:
    """The phone the user proved they hold in this round of the case (its verification call's
    channel). A phone verified in an earlier round may be the attacker's (a SIM swap found out
    since): secrets never go there."""
    call = db.session.scalars(select(VerificationCall).where(
        VerificationCall.case_id == case.id, VerificationCall.status == "verified",
        VerificationCall.round == case.round).order_by(VerificationCall.verified_at.desc())).first()
    return call.channel_id if call else None
