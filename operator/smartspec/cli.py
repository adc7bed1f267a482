"""The `smartspec` command: process entry points and developer tools.

Contract: specs/SPEC-001-overview.md, section "Command line".

Subcommands:
- `crds`      render the CRDs from the types into crds/ (or check that crds/ is current)
- `manifests` render RBAC roles and admission policies into deploy/ (or check them)
- `validate`  validate manifest files against the types, naming every field at fault
- `operator`  run the operator (kopf), configured by SMARTSPEC_* environment variables
- `gateway`   run the LLM gateway, configured by SMARTSPEC_* environment variables
- `ledger verify`  check a CreditBudget's hash-chained ledger against its spentCredits
- `storage check`  probe the bucket for conditional writes, `..` keys and upload policies
- `verify run|attestation`  check a run's signed provenance against the bucket (CORE-005)
- `provenance public-key|generate-key`  the attestation keys' public part; a new key
- `demo`      validate and print the example scenario (`make demo` runs it end to end)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic_settings import BaseSettings

from smartspec import __version__
from smartspec.api.manifest_yaml import load_manifest_documents
from smartspec.api.manifests import (
    ManifestError,
    describe_validation_error,
    is_smartspec_manifest,
    parse_manifest,
)
from smartspec.api.v1alpha1 import CreditBudget, GenerationRun, Resource, Spec
from smartspec.api.v1alpha1.creditbudget import CreditBudgetStatus
from smartspec.builders.crds import build_crds, crd_file_name, render_crd_yaml
from smartspec.builders.static import build_static_manifests, render_manifests_yaml
from smartspec.logic.run_tokens import InvalidTokenKeysError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_EXAMPLE = Path("examples/todo-service")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = _build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return EXIT_USAGE
    result: int = arguments.handler(arguments)
    return result


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartspec", description="Spec-driven, budgeted, tested code generation on Kubernetes."
    )
    parser.add_argument("--version", action="version", version=f"smartspec {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    crds = commands.add_parser("crds", help="render the CRDs from the resource types")
    crds.add_argument(
        "--output-dir", type=Path, default=Path("crds"), help="where to write (default: crds)"
    )
    crds.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the directory is stale"
    )
    crds.add_argument("--stdout", action="store_true", help="print all CRDs as one YAML stream")
    crds.set_defaults(handler=_run_crds)

    manifests = commands.add_parser(
        "manifests", help="render RBAC and admission policies into deploy/"
    )
    manifests.add_argument(
        "--output-dir", type=Path, default=Path("deploy"), help="where to write (default: deploy)"
    )
    manifests.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the directory is stale"
    )
    manifests.set_defaults(handler=_run_manifests)

    validate = commands.add_parser("validate", help="validate smartspec.dev manifests")
    validate.add_argument("paths", nargs="+", type=Path, help="YAML files or directories")
    validate.set_defaults(handler=_run_validate)

    operator = commands.add_parser(
        "operator", help="run the operator (settings from SMARTSPEC_* environment variables)"
    )
    operator.set_defaults(handler=_run_operator)

    gateway = commands.add_parser(
        "gateway", help="run the LLM gateway (settings from SMARTSPEC_* environment variables)"
    )
    gateway.set_defaults(handler=_run_gateway)

    ledger = commands.add_parser("ledger", help="ledger tools")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)
    verify = ledger_commands.add_parser(
        "verify", help="walk a CreditBudget's ledger chain in S3 and check it against spent"
    )
    verify.add_argument("--namespace", required=True, help="the budget's namespace")
    verify.add_argument("--budget", default="default", help="CreditBudget name (default: default)")
    verify.set_defaults(handler=_run_ledger_verify)

    storage = commands.add_parser("storage", help="storage tools")
    storage_commands = storage.add_subparsers(
        dest="storage_command", metavar="COMMAND", required=True
    )
    check = storage_commands.add_parser(
        "check", help="probe the bucket for the guarantees SmartSpec relies on (exit 1: broken)"
    )
    check.set_defaults(handler=_run_storage_check)

    _add_provenance_commands(commands)

    demo = commands.add_parser("demo", help="walk through the example scenario")
    demo.add_argument(
        "--example", type=Path, default=DEFAULT_EXAMPLE, help="example directory to use"
    )
    demo.set_defaults(handler=_run_demo)
    return parser


def _add_provenance_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """`verify run|attestation` and `provenance public-key|generate-key` (CORE-005)."""
    verify = commands.add_parser("verify", help="verify a run's signed provenance")
    verify_commands = verify.add_subparsers(dest="verify_command", metavar="COMMAND", required=True)
    run = verify_commands.add_parser(
        "run", help="the attestation in a run's status, against the bucket and the API"
    )
    run.add_argument("run", metavar="NAMESPACE/NAME", help="the GenerationRun")
    run.set_defaults(handler=_run_verify_run)
    attestation = verify_commands.add_parser(
        "attestation", help="a DSSE envelope file, against the bucket (no API access needed)"
    )
    attestation.add_argument("file", type=Path, help="the envelope (provenance.dsse.json)")
    attestation.set_defaults(handler=_run_verify_attestation)
    for command in (run, attestation):
        command.add_argument(
            "--key",
            type=Path,
            required=True,
            help="PEM public key(s) the signature must verify with",
        )

    provenance = commands.add_parser("provenance", help="attestation key tools")
    provenance_commands = provenance.add_subparsers(
        dest="provenance_command", metavar="COMMAND", required=True
    )
    public = provenance_commands.add_parser(
        "public-key", help="print the current key's public PEM (for auditors and cosign --key)"
    )
    public.add_argument("--keys-file", type=Path, help="default: $SMARTSPEC_PROVENANCE_KEYS_FILE")
    public.add_argument("--all", action="store_true", help="every key in the file, with its id")
    public.set_defaults(handler=_run_public_key)
    generate = provenance_commands.add_parser(
        "generate-key", help="print a new private key (PKCS#8 PEM) to put first in the key file"
    )
    generate.add_argument("--algorithm", choices=["ecdsa-p256", "ed25519"], default="ecdsa-p256")
    generate.set_defaults(handler=_run_generate_key)


def _run_verify_run(arguments: argparse.Namespace) -> int:
    from smartspec.provenance.commands import verify_run  # noqa: PLC0415

    return verify_run(arguments.run, arguments.key, sys.stdout, sys.stderr)


def _run_verify_attestation(arguments: argparse.Namespace) -> int:
    from smartspec.provenance.commands import verify_attestation  # noqa: PLC0415

    return verify_attestation(arguments.file, arguments.key, sys.stdout, sys.stderr)


def _run_public_key(arguments: argparse.Namespace) -> int:
    from smartspec.provenance.commands import print_public_keys  # noqa: PLC0415

    return print_public_keys(arguments.keys_file, arguments.all, sys.stdout, sys.stderr)


def _run_generate_key(arguments: argparse.Namespace) -> int:
    from smartspec.provenance.commands import print_new_key  # noqa: PLC0415

    return print_new_key(arguments.algorithm, sys.stdout)


def _load_settings(settings_class: type[SettingsT], what: str) -> SettingsT | None:
    """Settings from the environment, or None after printing one line per bad variable."""
    from pydantic import ValidationError  # noqa: PLC0415

    try:
        return settings_class()
    except ValidationError as error:
        print(f"invalid {what} settings (SMARTSPEC_* environment variables):", file=sys.stderr)
        for problem in describe_validation_error(error):
            print(f"  {problem}", file=sys.stderr)
        return None


def _run_operator(arguments: argparse.Namespace) -> int:
    # Imported here so the pure commands (crds, validate) start without kopf and boto3.
    from smartspec.provenance import InvalidProvenanceKeysError  # noqa: PLC0415
    from smartspec.runtime import run_operator  # noqa: PLC0415
    from smartspec.settings import OperatorSettings  # noqa: PLC0415
    from smartspec.storage import StorageError  # noqa: PLC0415

    settings = _load_settings(OperatorSettings, "operator")
    if settings is None:
        return EXIT_USAGE
    try:
        run_operator(settings)
    except (InvalidTokenKeysError, InvalidProvenanceKeysError, OSError) as error:
        print(f"the operator cannot start: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except StorageError as error:
        print(f"the operator cannot start: storage self-check: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _run_gateway(arguments: argparse.Namespace) -> int:
    from smartspec.gateway.config import ConfigError  # noqa: PLC0415
    from smartspec.gateway.server import run_gateway  # noqa: PLC0415
    from smartspec.settings import GatewaySettings  # noqa: PLC0415

    settings = _load_settings(GatewaySettings, "gateway")
    if settings is None:
        return EXIT_USAGE
    try:
        run_gateway(settings)
    except (ConfigError, OSError, ValueError) as error:
        print(f"the gateway cannot start: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _run_ledger_verify(arguments: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from smartspec.api.v1alpha1 import CreditBudget  # noqa: PLC0415
    from smartspec.gateway.ledger_store import verify_budget_ledger  # noqa: PLC0415
    from smartspec.kube.client import (  # noqa: PLC0415
        KubeClient,
        KubeError,
        custom_object_path,
        load_configuration,
    )
    from smartspec.storage import S3ObjectStore, StorageError  # noqa: PLC0415

    bucket = os.environ.get("SMARTSPEC_S3_BUCKET")
    if not bucket:
        print("set SMARTSPEC_S3_BUCKET (and SMARTSPEC_S3_ENDPOINT_URL if not AWS)", file=sys.stderr)
        return EXIT_USAGE

    async def read_budget() -> dict[str, object]:
        async with KubeClient(load_configuration()) as kube:
            path = custom_object_path("creditbudgets", arguments.namespace, arguments.budget)
            return await kube.get(path)

    try:
        budget = CreditBudget.model_validate(asyncio.run(read_budget()))
        store = S3ObjectStore(
            bucket,
            endpoint_url=os.environ.get("SMARTSPEC_S3_ENDPOINT_URL"),
            region=os.environ.get("SMARTSPEC_S3_REGION", "us-east-1"),
        )
        report = verify_budget_ledger(store, budget.status or CreditBudgetStatus())
    except (KubeError, StorageError) as error:
        print(f"cannot verify: {error}", file=sys.stderr)
        return EXIT_FAILURE
    verification = report.verification
    print(
        f"{arguments.namespace}/{arguments.budget}: {verification.entries} entries in "
        f"{verification.segments} segments; ledger sum this period "
        f"{verification.spent_since_rollover}, spentCredits {report.spent_credits}"
    )
    for problem in report.problems():
        print(f"  problem: {problem}", file=sys.stderr)
    print("ledger OK" if report.ok else "ledger BROKEN")
    return EXIT_OK if report.ok else EXIT_FAILURE


def _run_storage_check(arguments: argparse.Namespace) -> int:
    from smartspec.logic.storage_check import describe, failures  # noqa: PLC0415
    from smartspec.storage import S3ObjectStore, StorageError  # noqa: PLC0415
    from smartspec.storage.self_check import run_self_check  # noqa: PLC0415

    bucket = os.environ.get("SMARTSPEC_S3_BUCKET")
    if not bucket:
        print("set SMARTSPEC_S3_BUCKET (and SMARTSPEC_S3_ENDPOINT_URL if not AWS)", file=sys.stderr)
        return EXIT_USAGE
    store = S3ObjectStore(
        bucket,
        endpoint_url=os.environ.get("SMARTSPEC_S3_ENDPOINT_URL"),
        region=os.environ.get("SMARTSPEC_S3_REGION", "us-east-1"),
    )
    try:
        results = run_self_check(store)
    except StorageError as error:
        print(f"cannot check s3://{bucket}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    for line in describe(results):
        print(line)
    broken = failures(results)
    print(f"s3://{bucket}: " + (f"{len(broken)} check(s) FAILED" if broken else "storage OK"))
    return EXIT_FAILURE if broken else EXIT_OK


def _run_crds(arguments: argparse.Namespace) -> int:
    rendered = {crd_file_name(crd): render_crd_yaml(crd) for crd in build_crds()}
    if arguments.stdout:
        sys.stdout.write("---\n".join(rendered.values()))
        return EXIT_OK
    return _write_or_check(rendered, arguments.output_dir, check=arguments.check, command="crds")


def _run_manifests(arguments: argparse.Namespace) -> int:
    rendered = {
        name: render_manifests_yaml(documents)
        for name, documents in build_static_manifests().items()
    }
    return _write_or_check(
        rendered, arguments.output_dir, check=arguments.check, command="manifests"
    )


def _write_or_check(
    rendered: dict[str, str], output_dir: Path, *, check: bool, command: str
) -> int:
    """Write generated files, or (check) report which differ from what would be written."""
    if check:
        stale = [
            name
            for name, text in rendered.items()
            if not (output_dir / name).is_file()
            or (output_dir / name).read_text(encoding="utf-8") != text
        ]
        extra = sorted(path.name for path in output_dir.glob("*.yaml") if path.name not in rendered)
        for name in stale:
            print(f"stale: {output_dir / name} (run `smartspec {command}`)", file=sys.stderr)
        for name in extra:
            print(f"unexpected: {output_dir / name} (nothing renders it)", file=sys.stderr)
        return EXIT_FAILURE if stale or extra else EXIT_OK
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (output_dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {output_dir / name}")
    return EXIT_OK


def load_manifests(paths: Sequence[Path]) -> list[tuple[str, Resource]]:
    """Every smartspec.dev document in the files (directories: their *.yaml), validated.

    Raises ManifestError listing every problem of the first invalid document; documents of
    other API groups are skipped, because examples may carry Namespaces and the like.
    """
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.yaml")) if path.is_dir() else [path])
    resources: list[tuple[str, Resource]] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ManifestError(str(file), [f"cannot read the file: {error}"]) from None
        documents = load_manifest_documents(text, str(file))
        for index, document in enumerate(documents):
            source = f"{file}#{index}"
            if document is None:
                continue
            if not isinstance(document, dict):
                raise ManifestError(source, ["a manifest must be a mapping"])
            if is_smartspec_manifest(document):
                resources.append((source, parse_manifest(document, source)))
    return resources


def _run_validate(arguments: argparse.Namespace) -> int:
    try:
        resources = load_manifests(arguments.paths)
    except ManifestError as error:
        print(f"invalid: {error.source}", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILURE
    for source, resource in resources:
        print(f"valid: {source} {resource.KIND}/{resource.metadata.name}")
    if not resources:
        print("no smartspec.dev manifests found", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _run_demo(arguments: argparse.Namespace) -> int:
    example: Path = arguments.example
    if not example.is_dir():
        print(f"example directory {example} not found (run from the repository root)")
        return EXIT_USAGE
    try:
        loaded = [resource for _, resource in load_manifests([example])]
    except ManifestError as error:
        print(f"the example is invalid: {error}", file=sys.stderr)
        return EXIT_FAILURE
    # Present the scenario in the order it is applied: Spec, CreditBudget, then runs.
    order = [Spec.KIND, CreditBudget.KIND, GenerationRun.KIND]
    resources = sorted(loaded, key=lambda resource: order.index(resource.KIND))
    print(f"SmartSpec {__version__} demo: {example}")
    print()
    for resource in resources:
        if isinstance(resource, Spec):
            content = resource.spec
            print(f"Spec/{resource.metadata.name}: {content.title} v{content.version}")
            print(f"  owner {content.owner.team}, lifecycle {content.lifecycle.value}")
            for requirement in content.requirements:
                criteria = len(requirement.acceptance_criteria)
                print(f"  {requirement.id} [{requirement.priority.value}] {requirement.text}")
                print(f"    {criteria} acceptance criteria")
            if content.interfaces is not None:
                entities = ", ".join(entity.name for entity in content.interfaces.entities)
                print(f"  entities: {entities}")
                for endpoint in content.interfaces.endpoints:
                    print(f"  endpoint {endpoint.method.value} {endpoint.path}")
        elif isinstance(resource, CreditBudget):
            budget = resource.spec
            print(
                f"CreditBudget/{resource.metadata.name}: {budget.limit_credits} credits "
                f"per {budget.period.type.value} ({budget.period.time_zone}), "
                f"{budget.enforcement.value} mode"
            )
        elif isinstance(resource, GenerationRun):
            run = resource.spec
            model = run.generator.model or "no model"
            print(
                f"GenerationRun/{resource.metadata.name}: Spec/{run.spec_ref.name} with the "
                f"{run.generator.backend.value} generator ({model}), "
                f"up to {run.max_attempts} attempts"
            )
    print()
    print(f"All {len(resources)} manifests are valid against smartspec.dev/v1alpha1.")
    print(
        "This command only validates the scenario. `make demo` runs it through the whole "
        "pipeline on a local control plane (operator, gateway, sandbox Jobs, S3)."
    )
    return EXIT_OK
