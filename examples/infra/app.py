"""Infrastructure provisioning composed across packages (the seed's multi-crate example).

The orchestration here calls orchestrations and activities of two other
packages: a network as a sub-orchestration, then several VMs provisioned in
parallel as sub-orchestrations, each attached to the network.

Run:  python examples/infra/app.py
(with examples/infra/provisioning and examples/infra/networking installed, e.g.
`pip install -e examples/infra/provisioning -e examples/infra/networking`;
without installing, this script puts them on sys.path itself)
"""

import duroxide_macros.install  # noqa: F401

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

for package_dir in ("provisioning", "networking"):  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent / package_dir))

from infra_networking import Network, NetworkConfig, attach_vm_to_network, setup_network  # noqa: E402
from infra_provisioning import VmConfig, VmInstance, provision_vm  # noqa: E402

from duroxide_macros.prelude import *  # noqa: E402


@dataclass
class InfraRequest:
    vm_names: list[str]
    vm_size: str
    network_name: str
    network_cidr: str
    region: str


@dataclass
class InfraResult:
    vms: list[VmInstance]
    network: Network
    status: str


@orchestration(version="1.0.0")
async def provision_infrastructure(ctx: OrchestrationContext, request: InfraRequest) -> InfraResult:
    durable_trace_info("Provisioning infrastructure in region: {}", request.region)
    network = await durable(setup_network(NetworkConfig(request.network_name, request.network_cidr, request.region)))
    vms = await asyncio.gather(*(
        durable(provision_vm(VmConfig(name, request.vm_size, request.region))) for name in request.vm_names))
    await ctx.join([durable(attach_vm_to_network(vm.id, network.id)) for vm in vms])
    return InfraResult(vms=list(vms), network=network, status="ready")


@duroxide_main
async def main() -> None:
    request = InfraRequest(["web-1", "web-2", "db-1"], "t3.large", "production-net", "10.0.0.0/24", "us-west-2")
    result = await provision_infrastructure.run("infra-1", request, timeout=60)
    print("INFRASTRUCTURE PROVISIONED")
    for vm in result.vms:
        print(f"VM: {vm.id} ({vm.ip})")
    print(f"Network: {result.network.id} ({result.network.cidr})")
    print(f"Status: {result.status}")


if __name__ == "__main__":
    main()
