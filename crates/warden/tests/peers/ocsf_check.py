"""Validates OCSF events (JSON lines) against the OCSF 1.5.0 schema, as the models that
`ocsf-emitter` generates from it.

Usage: ocsf_check.py FILE. Prints one line per invalid event and exits 1 when any is invalid.
"""

import json
import sys

from ocsf_emitter import _models as ocsf
from pydantic import ValidationError

MODELS = {
    6003: ocsf.ApiActivity,
    4002: ocsf.HttpActivity,
    4001: ocsf.NetworkActivity,
    2004: ocsf.DetectionFinding,
}


def main() -> int:
    bad = 0
    with open(sys.argv[1], encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            event = json.loads(line)
            model = MODELS.get(event.get("class_uid"))
            problems = []
            if model is None:
                problems.append(f"unexpected class_uid {event.get('class_uid')}")
            else:
                try:
                    model.model_validate(event)
                except ValidationError as error:
                    problems.append(f"{model.__name__}: {error}")
            if event.get("type_uid") != event.get("class_uid", 0) * 100 + event.get("activity_id", -1):
                problems.append("type_uid is not class_uid * 100 + activity_id")
            if event.get("metadata", {}).get("version") != "1.5.0":
                problems.append("metadata.version is not 1.5.0")
            if event.get("class_uid") == 4002 and not (event.get("http_request") or event.get("http_response")):
                problems.append("HTTP Activity needs http_request or http_response")
            for problem in problems:
                print(f"line {number}: {problem}")
            bad += bool(problems)
    print(f"{bad} invalid events")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
