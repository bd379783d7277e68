"""An unchanged official A2A Python SDK client (a2a-sdk), pointed at Warden's gateway.

Usage: a2a_client.py URL CREDENTIALS_DIR
URL is the peer's address at the gateway (`https://…/a2a/<peer>`); the client resolves the
agent card there and calls the interface the card names. Prints one JSON document with what it
saw. Only the URL and the credentials (mTLS with the agent's SVID, its grant as a bearer token)
differ from talking to the agent directly.
"""

import asyncio
import json
import ssl
import sys

import httpx
from a2a.client import ClientConfig, create_client
from a2a.helpers import get_artifact_text, new_text_message
from a2a.types import CancelTaskRequest, GetTaskRequest, ListTasksRequest, Role, SendMessageRequest


async def run(url: str, http: httpx.AsyncClient, streaming: bool, text: str):
    client = await create_client(
        url, client_config=ClientConfig(httpx_client=http, streaming=streaming)
    )
    events = []
    task_id = None
    request = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
    async for event in client.send_message(request):
        kind = event.WhichOneof("payload")
        events.append(kind)
        if kind == "task":
            task_id = event.task.id
        elif kind in ("status_update", "artifact_update"):
            task_id = getattr(event, kind).task_id
    return client, task_id, events


async def main(url: str, creds: str) -> None:
    tls = ssl.create_default_context(cafile=f"{creds}/bundle.pem")
    tls.load_cert_chain(f"{creds}/svid.pem", f"{creds}/svid-key.pem")
    with open(f"{creds}/grant") as f:
        grant = f.read().strip()
    seen = {}
    async with httpx.AsyncClient(
        verify=tls, headers={"Authorization": f"Bearer {grant}"}, timeout=30
    ) as http:
        card = (await http.get(f"{url}/.well-known/agent-card.json")).json()
        seen["card_interfaces"] = card.get("supportedInterfaces")
        client, task_id, _ = await run(url, http, False, "hello")
        task = await client.get_task(GetTaskRequest(id=task_id))
        seen["task"] = task_id
        seen["state"] = task.status.state
        seen["artifact"] = get_artifact_text(task.artifacts[0])
        listed = await client.list_tasks(ListTasksRequest())
        seen["listed"] = [t.id for t in listed.tasks]
        try:
            await client.cancel_task(CancelTaskRequest(id=task_id))
            seen["cancel"] = "allowed"
        except Exception as e:  # noqa: BLE001 - whatever the SDK raises, report it
            seen["cancel"] = f"{type(e).__name__}: {e}"
        _, streamed_task, events = await run(url, http, True, "stream me")
        seen["stream_task"] = streamed_task
        seen["stream_events"] = events
        followed = await client.get_task(GetTaskRequest(id=streamed_task))
        seen["stream_artifact"] = get_artifact_text(followed.artifacts[0])
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
