"""Everything the web process's endpoints use, built once by `relay.http.app.create_app`
and handed to them: they reach no service any other way."""

from __future__ import annotations

from dataclasses import dataclass

from relay.admin.auth import AdminAuth
from relay.core.budget import ByteBudget
from relay.core.metrics import Metrics
from relay.forwarding.supervisor import ForwardingProcess
from relay.forwarding.view import ForwarderViews
from relay.http.passthrough import PassThrough
from relay.outbox import AsyncOutbox
from relay.reconciliation.service import Reconcilers
from relay.settings import Settings
from relay.web.bodies import Pace


@dataclass(frozen=True)
class Services:
    settings: Settings
    outbox: AsyncOutbox
    metrics: Metrics
    #: Every destination's forwarder, in this process or seen through the store.
    forwarders: ForwarderViews
    #: The providers reconciled, and what /health says of their runs.
    reconcilers: Reconcilers
    pass_through: PassThrough
    #: Bytes of request bodies held at once, before and after they are verified.
    unverified_bodies: ByteBudget
    verified_bodies: ByteBudget
    body_pace: Pace | None
    #: None while RELAY_ADMIN_TOKEN is unset: the operators' surfaces are off.
    admin_auth: AdminAuth | None
    #: The forwarding process this server supervises (RELAY_FORWARD=process).
    forwarding_process: ForwardingProcess | None
    started_monotonic: float
