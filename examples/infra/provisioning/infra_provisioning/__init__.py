"""VM provisioning: activities and a provision_vm orchestration, in a package of their own."""

import asyncio
from dataclasses import dataclass

from duroxide_macros.prelude import *


@dataclass
class VmConfig:
    name: str
    instance_type: str
    region: str


@dataclass
class VmInstance:
    id: str
    ip: str
    status: str


@activity(typed=True)
async def create_vm(config: VmConfig) -> VmInstance:
    durable_trace_info("Creating VM: {} ({}) in {}", config.name, config.instance_type, config.region)
    await asyncio.sleep(0.02)
    return VmInstance(id=f"vm-{config.name}", ip=f"10.0.1.{len(config.name)}", status="running")


@activity(typed=True)
async def wait_for_vm_ready(vm_id: str) -> None:
    await asyncio.sleep(0.01)


@activity(typed=True)
async def install_software(vm_id: str, packages: list[str]) -> None:
    durable_trace_info("Installing {} on {}", ", ".join(packages), vm_id)


@activity(typed=True)
async def delete_vm(vm_id: str) -> None:
    durable_trace_info("Deleting VM: {}", vm_id)


@orchestration(version="1.0.0")
async def provision_vm(ctx: OrchestrationContext, config: VmConfig) -> VmInstance:
    vm = await durable(create_vm(config))
    await durable(wait_for_vm_ready(vm.id))
    await durable(install_software(vm.id, ["nginx", "docker"]))
    return vm
