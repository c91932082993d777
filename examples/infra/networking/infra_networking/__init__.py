"""Networking: activities and a setup_network orchestration, in a package of their own."""

from dataclasses import dataclass

from duroxide_macros.prelude import *


@dataclass
class NetworkConfig:
    name: str
    cidr: str
    region: str


@dataclass
class Network:
    id: str
    cidr: str


@activity(typed=True)
async def create_network(config: NetworkConfig) -> Network:
    durable_trace_info("Creating network: {} ({}) in {}", config.name, config.cidr, config.region)
    return Network(id=f"net-{config.name}", cidr=config.cidr)


@activity(typed=True)
async def configure_firewall(network_id: str, rules: list[str]) -> int:
    return len(rules)


@activity(typed=True)
async def attach_vm_to_network(vm_id: str, network_id: str) -> None:
    durable_trace_info("Attaching VM {} to network {}", vm_id, network_id)


@orchestration(version="1.0.0")
async def setup_network(ctx: OrchestrationContext, config: NetworkConfig) -> Network:
    network = await durable(create_network(config))
    await durable(configure_firewall(network.id, ["allow tcp 443", "allow tcp 22 from 10.0.0.0/8"]))
    return network
