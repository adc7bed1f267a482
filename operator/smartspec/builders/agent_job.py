"""The generator pod of an agent run: prepare, the agent under its launcher, then finish.

Contract: specs/CORE-004-generation-runs.md, section "Agent backend".

The run's agent image runs as an init container between two steps of our generator image
(`smartspec.sandbox.agent prepare` and `finish`), so its exit never skips the finish step:
the launcher records the exit status and always exits 0 itself. The agent gets the
workspace, scratch, its status volume and the gateway (URLs and the run token, the latter
from the instructions Secret's RUN_TOKEN_KEY), never the instructions file: the presigned
upload URLs stay with finish, which uploads only what it scanned.
Pure: plain dicts in, plain dicts out.
"""

from __future__ import annotations

import copy
from typing import Any

from smartspec.api.sandbox import AGENT_SPEC_FILE, AGENT_STATUS_DIR, AGENT_TASK_FILE
from smartspec.api.v1alpha1 import GenerationRun
from smartspec.api.v1alpha1.generationrun import AgentSettings

__all__ = [
    "AGENT_CONTAINER",
    "AGENT_FINISH_COMMAND",
    "AGENT_PREPARE_COMMAND",
    "FINISH_RESERVE_SECONDS",
    "LAUNCHER_SCRIPT",
    "PREPARE_CONTAINER",
    "RUN_TOKEN_KEY",
    "add_agent",
    "agent_timeout_seconds",
]

AGENT_CONTAINER = "agent"
PREPARE_CONTAINER = "prepare"
AGENT_PREPARE_COMMAND = ("python", "-m", "smartspec.sandbox.agent", "prepare")
AGENT_FINISH_COMMAND = ("python", "-m", "smartspec.sandbox.agent", "finish")
RUN_TOKEN_KEY = "run-token"  # noqa: S105 (a Secret key name, not a secret)
"""The instructions Secret's key holding the run token alone, for the agent's env."""
FINISH_RESERVE_SECONDS = 120
"""Left of the Job's deadline after the agent's timeout, for finish to scan and upload (at
most a quarter of the deadline)."""
KILL_GRACE_SECONDS = 10
STATUS_SIZE_LIMIT = "1Mi"

# POSIX sh (dash, busybox ash, bash). Where job control works (set -m: bash, busybox) the
# agent has its own process group and the watchdog stops everything it started; dash keeps
# one group, so there only the agent's process is signalled (the runtime kills what is left
# when the launcher, the container's first process, exits). Backquotes, not $(...): the kubelet
# expands $(NAME) in command and args. The record is written by rename, so finish reads a
# whole one or none. The launcher's own exit status is 0: the pod goes on to finish.
LAUNCHER_SCRIPT = """\
set -m
dir="$SMARTSPEC_AGENT_STATUS_DIR"
started=`date +%s 2>/dev/null || echo 0`
"$@" </dev/null &
agent=$!
stop() { kill -"$1" -"$agent" 2>/dev/null || kill -"$1" "$agent" 2>/dev/null; }
( sleep "$SMARTSPEC_AGENT_TIMEOUT_SECONDS"; : >"$dir/timed-out"
  stop TERM; sleep {grace}; stop KILL ) &
watchdog=$!
trap 'stop TERM' TERM INT
while :; do
  wait "$agent"; code=$?
  kill -0 "$agent" 2>/dev/null || break
done
kill -KILL -"$watchdog" 2>/dev/null || kill -KILL "$watchdog" 2>/dev/null
timed_out=false; [ -e "$dir/timed-out" ] && timed_out=true
finished=`date +%s 2>/dev/null || echo 0`
printf '{"format":"smartspec.dev/agent-status/v1","exitCode":%d,"timedOut":%s,\
"startedAt":%d,"finishedAt":%d}\\n' "$code" "$timed_out" "$started" "$finished" \
  >"$dir/status.json.tmp" && mv "$dir/status.json.tmp" "$dir/status.json"
echo "smartspec-agent: the agent ended with status $code (timed out: $timed_out)" >&2
exit 0
""".replace("{grace}", str(KILL_GRACE_SECONDS))


def agent_timeout_seconds(agent: AgentSettings, deadline_seconds: int) -> int:
    """The agent's own limit: its timeoutSeconds, but short enough that finish still runs
    before the Job's deadline kills the pod (a quarter of a short deadline is kept for it)."""
    reserve = min(FINISH_RESERVE_SECONDS, deadline_seconds // 4)
    return max(1, min(agent.timeout_seconds, deadline_seconds - reserve))


def add_agent(
    run: GenerationRun,
    pod: dict[str, Any],
    finish: dict[str, Any],
    *,
    instructions_secret: str,
    gateway_base_url: str,
    deadline_seconds: int,
) -> None:
    """Turn a generator pod into an agent pod: `finish` (the generator container) runs
    `finish`, after `prepare` and the agent as init containers."""
    agent = run.spec.generator.agent
    if agent is None:
        raise ValueError("add_agent needs a run whose generator.agent is set")
    prepare = copy.deepcopy(finish)
    prepare["name"] = PREPARE_CONTAINER
    prepare["command"] = list(AGENT_PREPARE_COMMAND)
    finish["command"] = list(AGENT_FINISH_COMMAND)
    status_mount = {"name": "agent-status", "mountPath": AGENT_STATUS_DIR}
    finish["volumeMounts"].append({**status_mount, "readOnly": True})
    finish["env"].append({"name": "SMARTSPEC_AGENT_STATUS_DIR", "value": AGENT_STATUS_DIR})
    workspace = finish["workingDir"]
    token = {"valueFrom": {"secretKeyRef": {"name": instructions_secret, "key": RUN_TOKEN_KEY}}}
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},  # noqa: S108 (the pod's private scratch emptyDir)
        {"name": "TMPDIR", "value": "/tmp"},  # noqa: S108
        {"name": "SMARTSPEC_MODEL", "value": run.spec.generator.model or ""},
        {"name": "SMARTSPEC_WORKSPACE", "value": workspace},
        {"name": "SMARTSPEC_TASK_FILE", "value": f"{workspace}/{AGENT_TASK_FILE}"},
        {"name": "SMARTSPEC_SPEC_FILE", "value": f"{workspace}/{AGENT_SPEC_FILE}"},
        {"name": "SMARTSPEC_AGENT_STATUS_DIR", "value": AGENT_STATUS_DIR},
        {
            "name": "SMARTSPEC_AGENT_TIMEOUT_SECONDS",
            "value": str(agent_timeout_seconds(agent, deadline_seconds)),
        },
        # Both spellings: SDKs read OPENAI_BASE_URL, litellm-based tools OPENAI_API_BASE.
        {"name": "OPENAI_BASE_URL", "value": gateway_base_url},
        {"name": "OPENAI_API_BASE", "value": gateway_base_url},
        {"name": "OPENAI_API_KEY", **token},
        # Anthropic's SDKs append /v1/messages to the base URL themselves.
        {"name": "ANTHROPIC_BASE_URL", "value": gateway_base_url.removesuffix("/v1")},
        {"name": "ANTHROPIC_API_KEY", **token},
    ]
    env += [{"name": item.name, "value": item.value} for item in agent.env]
    launcher = {
        "name": AGENT_CONTAINER,
        "image": agent.image,
        "imagePullPolicy": finish["imagePullPolicy"],
        "command": ["/bin/sh", "-c", LAUNCHER_SCRIPT, "smartspec-agent-launcher"],
        "args": [*agent.command, *agent.args],
        "env": env,
        "workingDir": workspace,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(finish["securityContext"]),
        "resources": copy.deepcopy(finish["resources"]),
        "volumeMounts": [
            mount for mount in finish["volumeMounts"] if mount["name"] in {"workspace", "tmp"}
        ]
        + [status_mount],
    }
    pod["initContainers"] = [*pod.get("initContainers", []), prepare, launcher]
    pod["volumes"].append({"name": "agent-status", "emptyDir": {"sizeLimit": STATUS_SIZE_LIMIT}})
