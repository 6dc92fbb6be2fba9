"""The state machine, without a database: (state, event) -> (state, effects)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mailbot import workflow
from mailbot.domain import (
    Channel,
    Decision,
    Party,
    Request,
    RequestStatus,
    Role,
    Service,
    Side,
    ValidationStatus,
)
from mailbot.errors import (
    DuplicateRequest,
    NoChange,
    NotAuthorized,
    NotInGoodStanding,
    RequestClosed,
    TokenUsed,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ADMIN = Party("admin@x.test", "Admin", id=1)
TECH = Party("tech@x.test", "Tech", id=2)
BILLING = Party("billing@x.test", "Billing", id=3)
NEW = Party("new@y.test", "Newcomer", id=4)
OTHER = Party("other@y.test", "Other", id=5)
OPERATOR = Party("ops@agency.test")
SERVICE = Service("x.test", {Role.ADMIN: ADMIN, Role.TECH: TECH, Role.BILLING: BILLING})


def open_(
    requester: Party = ADMIN,
    wanted: dict[Role, Party] | None = None,
    *,
    operator: bool = False,
    service: Service = SERVICE,
    pending: frozenset[Role] = frozenset(),
) -> workflow.Transition:
    return workflow.open_request(
        request_id="CR-TEST0001",
        service=service,
        requester=requester,
        requester_is_operator=operator,
        wanted=wanted if wanted is not None else {Role.TECH: NEW},
        pending_roles=pending,
        now=NOW,
        ttl=timedelta(days=14),
    )


def validators(request: Request) -> list[tuple[str, Side]]:
    return [(v.contact.email, v.side) for v in request.validations]


# DESIGN.md §1: who validates and who is only informed.
@pytest.mark.parametrize(
    ("requester", "wanted", "operator", "expected_validators", "expected_informed"),
    [
        pytest.param(
            ADMIN,
            {Role.TECH: NEW},
            False,
            [(ADMIN.email, Side.CURRENT), (NEW.email, Side.NEW)],
            [TECH.email],
            id="admin names a new tech contact",
        ),
        pytest.param(
            ADMIN,
            {Role.BILLING: NEW},
            False,
            [(ADMIN.email, Side.CURRENT), (NEW.email, Side.NEW)],
            [BILLING.email],
            id="admin names a new billing contact",
        ),
        pytest.param(
            ADMIN,
            {Role.TECH: ADMIN},
            False,
            [(ADMIN.email, Side.CURRENT)],
            [TECH.email],
            id="admin takes the tech role back",
        ),
        pytest.param(
            ADMIN,
            {Role.ADMIN: NEW},
            False,
            [(ADMIN.email, Side.CURRENT), (NEW.email, Side.NEW)],
            [],
            id="admin role moves",
        ),
        pytest.param(
            TECH,
            {Role.TECH: NEW},
            False,
            [(TECH.email, Side.CURRENT), (NEW.email, Side.NEW)],
            [ADMIN.email],
            id="tech holder hands over",
        ),
        pytest.param(
            BILLING,
            {Role.BILLING: NEW},
            False,
            [(BILLING.email, Side.CURRENT), (NEW.email, Side.NEW)],
            [ADMIN.email],
            id="billing holder hands over",
        ),
        pytest.param(
            OPERATOR,
            {Role.TECH: NEW},
            True,
            [(ADMIN.email, Side.CURRENT), (NEW.email, Side.NEW)],
            [TECH.email],
            id="operator opens, admin validates on the current side",
        ),
        pytest.param(
            ADMIN,
            {Role.TECH: NEW, Role.BILLING: NEW},
            False,
            [(ADMIN.email, Side.CURRENT), (NEW.email, Side.NEW)],
            [TECH.email, BILLING.email],
            id="one contact validates once for several roles",
        ),
        pytest.param(
            ADMIN,
            {Role.TECH: NEW, Role.BILLING: OTHER},
            False,
            [(ADMIN.email, Side.CURRENT), (NEW.email, Side.NEW), (OTHER.email, Side.NEW)],
            [TECH.email, BILLING.email],
            id="two new contacts",
        ),
    ],
)
def test_who_validates_and_who_is_informed(
    requester: Party,
    wanted: dict[Role, Party],
    operator: bool,
    expected_validators: list[tuple[str, Side]],
    expected_informed: list[str],
) -> None:
    request = open_(requester, wanted, operator=operator).request
    assert validators(request) == expected_validators
    assert [p.email for p in request.informed] == expected_informed


def test_opening_tells_the_requester_and_asks_each_validator() -> None:
    transition = open_()
    assert transition.effects == (
        workflow.Notify("request-opened", (ADMIN,)),
        workflow.AskToValidate(ADMIN),
        workflow.AskToValidate(NEW),
    )
    assert transition.request.status is RequestStatus.PENDING
    assert transition.request.expires_at == NOW + timedelta(days=14)


@pytest.mark.parametrize(
    ("requester", "wanted"),
    [
        (OTHER, {Role.TECH: NEW}),  # a stranger
        (TECH, {Role.BILLING: NEW}),  # the tech holder on another role
        (TECH, {Role.ADMIN: NEW}),  # the tech holder on the admin role
        (BILLING, {Role.TECH: NEW, Role.BILLING: NEW}),  # more than the role held
    ],
)
def test_who_may_not_open(requester: Party, wanted: dict[Role, Party]) -> None:
    with pytest.raises(NotAuthorized):
        open_(requester, wanted)


def test_a_change_to_the_current_holder_is_no_change() -> None:
    with pytest.raises(NoChange):
        open_(ADMIN, {Role.TECH: TECH})
    with pytest.raises(NoChange):
        open_(ADMIN, {Role.TECH: NEW, Role.BILLING: BILLING})


def test_a_pending_request_on_the_same_role_is_a_duplicate() -> None:
    with pytest.raises(DuplicateRequest):
        open_(pending=frozenset({Role.TECH}))
    assert open_(pending=frozenset({Role.BILLING})).request.pending


@pytest.mark.parametrize(
    ("service", "wanted"),
    [
        (replace(SERVICE, in_good_standing=False), {Role.TECH: NEW}),
        (SERVICE, {Role.TECH: replace(NEW, in_good_standing=False)}),
        (
            Service(
                "x.test", {**SERVICE.holders, Role.ADMIN: replace(ADMIN, in_good_standing=False)}
            ),
            {Role.TECH: NEW},
        ),
    ],
)
def test_good_standing_is_required(service: Service, wanted: dict[Role, Party]) -> None:
    with pytest.raises(NotInGoodStanding):
        open_(ADMIN if service.admin.in_good_standing else service.admin, wanted, service=service)


def decide(
    request: Request, who: Party, decision: Decision = Decision.ACCEPT, actor: str | None = None
) -> workflow.Transition:
    return workflow.decide(
        request,
        contact=who,
        decision=decision,
        channel=Channel.EMAIL,
        now=NOW + timedelta(hours=1),
        actor=actor,
    )


def test_first_acceptance_is_recorded_and_the_other_is_awaited() -> None:
    request = open_().request
    transition = decide(request, ADMIN)
    assert transition.request.status is RequestStatus.PENDING
    assert [v.contact for v in transition.request.awaited] == [NEW]
    assert transition.effects == (workflow.Notify("validation-recorded", (ADMIN,)),)


def test_last_acceptance_applies_the_change_and_tells_everyone() -> None:
    request = decide(open_().request, ADMIN).request
    transition = decide(request, NEW)
    assert transition.request.status is RequestStatus.DONE
    assert transition.request.closed_at == NOW + timedelta(hours=1)
    apply, notify = transition.effects
    assert isinstance(apply, workflow.ApplyHolders)
    assert apply.holders == {Role.ADMIN: ADMIN, Role.TECH: NEW, Role.BILLING: BILLING}
    assert notify == workflow.Notify("request-done", (ADMIN, NEW, TECH))


def test_one_refusal_refuses_the_whole_request() -> None:
    transition = decide(open_().request, NEW, Decision.REFUSE)
    assert transition.request.status is RequestStatus.REFUSED
    assert transition.effects == (workflow.Notify("request-refused", (ADMIN, NEW)),)
    refused = transition.request.validation_of(NEW)
    assert refused is not None
    assert refused.status is ValidationStatus.REFUSED


def test_a_decision_counts_once() -> None:
    request = decide(open_().request, ADMIN).request
    with pytest.raises(TokenUsed):
        decide(request, ADMIN, Decision.REFUSE)


def test_a_closed_request_takes_no_more_decisions() -> None:
    request = decide(open_().request, ADMIN, Decision.REFUSE).request
    with pytest.raises(RequestClosed):
        decide(request, NEW)


def test_someone_who_is_not_asked_cannot_decide() -> None:
    with pytest.raises(NotAuthorized):
        decide(open_().request, OTHER)


def test_the_actor_is_kept_when_it_is_not_the_contact() -> None:
    request = decide(open_().request, ADMIN, actor="desk@agency.test").request
    validation = request.validation_of(ADMIN)
    assert validation is not None
    assert validation.actor == "desk@agency.test"
    own = decide(open_().request, ADMIN, actor=ADMIN.email).request.validation_of(ADMIN)
    assert own is not None
    assert own.actor is None


def test_taking_a_role_back_needs_the_admin_alone() -> None:
    transition = decide(open_(ADMIN, {Role.TECH: ADMIN}).request, ADMIN)
    assert transition.request.status is RequestStatus.DONE
    assert transition.effects[1] == workflow.Notify("request-done", (ADMIN, TECH))


# -- decisions held from the link page ---------------------------------------------

WINDOW = timedelta(minutes=10)


def hold(
    request: Request, contact: Party, decision: Decision = Decision.ACCEPT
) -> workflow.Transition:
    return workflow.hold(request, contact=contact, decision=decision, now=NOW, window=WINDOW)


def test_a_held_decision_changes_nothing_yet_and_asks_for_the_mail() -> None:
    transition = hold(open_().request, NEW)
    held = transition.request.validation_of(NEW)
    assert held is not None
    assert (held.status, held.held, held.held_until) == (
        ValidationStatus.PENDING,
        Decision.ACCEPT,
        NOW + WINDOW,
    )
    assert transition.request.status is RequestStatus.PENDING
    assert transition.effects == (workflow.ConfirmHeld(NEW, Decision.ACCEPT, NOW + WINDOW),)


def test_a_held_decision_applies_at_the_end_of_the_window_and_once() -> None:
    request = hold(hold(open_().request, ADMIN).request, NEW, Decision.ACCEPT).request
    early = workflow.apply_held(request, contact=NEW, now=NOW + WINDOW - timedelta(seconds=1))
    assert early == workflow.Transition(request, ())

    applied = workflow.apply_held(request, contact=NEW, now=NOW + WINDOW)
    decided = applied.request.validation_of(NEW)
    assert decided is not None
    assert (decided.status, decided.channel, decided.held) == (
        ValidationStatus.ACCEPTED,
        Channel.WEB,
        None,
    )
    assert applied.effects == (workflow.Notify("validation-recorded", (NEW,)),)
    again = workflow.apply_held(applied.request, contact=NEW, now=NOW + WINDOW)
    assert again.effects == ()


def test_a_held_refusal_refuses_once_applied_and_drops_the_other_holds() -> None:
    request = hold(hold(open_().request, ADMIN).request, NEW, Decision.REFUSE).request
    transition = workflow.apply_held(request, contact=NEW, now=NOW + WINDOW)
    assert transition.request.status is RequestStatus.REFUSED
    assert all(v.held is None for v in transition.request.validations)  # ADMIN's too


def test_undo_restores_pending_and_a_second_undo_is_refused() -> None:
    request = hold(open_().request, NEW).request
    undone = workflow.undo(request, contact=NEW)
    validation = undone.request.validation_of(NEW)
    assert validation is not None
    assert (validation.status, validation.held, validation.held_until) == (
        ValidationStatus.PENDING,
        None,
        None,
    )
    assert undone.effects == ()
    assert workflow.apply_held(undone.request, contact=NEW, now=NOW + WINDOW).effects == ()
    with pytest.raises(TokenUsed):
        workflow.undo(undone.request, contact=NEW)


def test_an_emailed_answer_replaces_the_held_one() -> None:
    request = hold(open_().request, NEW, Decision.ACCEPT).request
    transition = decide(request, NEW, Decision.REFUSE)
    refused = transition.request.validation_of(NEW)
    assert refused is not None
    assert (refused.status, refused.channel, refused.held) == (
        ValidationStatus.REFUSED,
        Channel.EMAIL,
        None,
    )


def test_a_decision_cannot_be_held_twice_or_on_a_closed_request() -> None:
    request = hold(open_().request, NEW).request
    with pytest.raises(TokenUsed):
        hold(request, NEW, Decision.REFUSE)
    closed = decide(open_().request, ADMIN, Decision.REFUSE).request
    with pytest.raises(RequestClosed):
        hold(closed, NEW)
    with pytest.raises(NotAuthorized):
        hold(open_().request, OTHER)


@pytest.mark.parametrize("close", ["cancel", "expire"])
def test_closing_a_request_drops_its_held_decisions(close: str) -> None:
    request = hold(open_().request, NEW).request
    if close == "cancel":
        closed = workflow.cancel(request, by=ADMIN, by_operator=False, now=NOW).request
    else:
        closed = workflow.expire(request, request.expires_at).request
    assert all(v.held is None for v in closed.validations)
    assert workflow.apply_held(closed, contact=NEW, now=NOW + WINDOW).effects == ()


def test_a_contact_whose_answer_is_held_is_not_reminded() -> None:
    request = hold(open_().request, NEW).request
    transition = workflow.remind(request, NOW + timedelta(days=3), [3])
    assert [e.contact for e in transition.effects if isinstance(e, workflow.Remind)] == [ADMIN]


def notices(transition: workflow.Transition) -> list[tuple[list[str], str | None]]:
    """Each notice's recipients, and whom it names as having cancelled."""
    return [
        ([p.email for p in e.recipients], e.about["cancelled_by"].email if e.about else None)
        for e in transition.effects
        if isinstance(e, workflow.Notify)
    ]


@pytest.mark.parametrize(
    ("requester", "by", "operator", "expected"),
    [
        pytest.param(
            ADMIN,
            ADMIN,
            False,
            [([ADMIN.email], ADMIN.email), ([NEW.email], ADMIN.email)],
            id="the requester is told apart",
        ),
        pytest.param(
            TECH,
            ADMIN,
            False,
            [([ADMIN.email], ADMIN.email), ([TECH.email, NEW.email], ADMIN.email)],
            id="the admin takes no part but is told",
        ),
        pytest.param(
            ADMIN,
            OPERATOR,
            True,
            [([OPERATOR.email], OPERATOR.email), ([ADMIN.email, NEW.email], None)],
            id="an operator by mail: customers read the support",
        ),
        pytest.param(
            ADMIN, None, True, [([ADMIN.email, NEW.email], None)], id="the support from the CLI"
        ),
    ],
)
def test_whoever_cancels_is_told_and_customers_read_who(
    requester: Party,
    by: Party | None,
    operator: bool,
    expected: list[tuple[list[str], str | None]],
) -> None:
    request = open_(requester).request
    assert notices(workflow.cancel(request, by=by, by_operator=operator, now=NOW)) == expected


@pytest.mark.parametrize(
    ("requester", "operator", "service", "wanted", "expected"),
    [
        pytest.param(
            ADMIN,
            False,
            replace(SERVICE, in_good_standing=False),
            {Role.TECH: NEW},
            {"standing": "service", "contact": ADMIN.email, "reader": "self", "roles": ""},
            id="the admin's own service",
        ),
        pytest.param(
            TECH,
            False,
            replace(SERVICE, in_good_standing=False),
            {Role.TECH: NEW},
            {"standing": "service", "contact": ADMIN.email, "reader": "other", "roles": ""},
            id="a tech contact is not told of the admin's account",
        ),
        pytest.param(
            ADMIN,
            False,
            SERVICE,
            {Role.TECH: replace(NEW, in_good_standing=False)},
            {"standing": "contact", "contact": NEW.email, "reader": "other", "roles": "tech"},
            id="another contact's account is theirs",
        ),
        pytest.param(
            OPERATOR,
            True,
            SERVICE,
            {Role.BILLING: replace(NEW, in_good_standing=False)},
            {"standing": "contact", "contact": NEW.email, "reader": "operator", "roles": "billing"},
            id="an operator reads it",
        ),
    ],
)
def test_a_refusal_for_standing_says_who_may_read_why(
    requester: Party,
    operator: bool,
    service: Service,
    wanted: dict[Role, Party],
    expected: dict[str, str],
) -> None:
    with pytest.raises(NotInGoodStanding) as raised:
        open_(requester, wanted, operator=operator, service=service)
    assert {k: raised.value.context[k] for k in expected} == expected
