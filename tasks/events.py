"""Events sent outside a flow run: the dataset watcher's transferflow.dataset.changed."""

import asyncio
import uuid

from prefect.events import Event
from prefect.events.clients import get_events_client

from transferflow.config.naming import dataset_slug
from transferflow.retraining.watch import EVENT, Change


def emit_dataset_changed(change: Change) -> None:
    """Send transferflow.dataset.changed and return once the server confirmed it (the watcher
    records a change as announced only then). Its id comes from the change, so a re-send after a
    crash is the same event, which the trigger service discards as already seen."""
    event = Event(
        event=EVENT,
        id=uuid.UUID(change.event_id),
        resource={"prefect.resource.id": f"transferflow.dataset.{dataset_slug(change.prefix)}",
                  "prefect.resource.name": change.prefix},
        payload={"dataset": change.prefix, "fingerprint": change.fingerprint, "objects": change.objects},
    )
    asyncio.run(_send(event))


async def _send(event: Event) -> None:
    async with get_events_client(checkpoint_every=1) as client:  # every event confirmed by a ping
        await client.emit(event)
