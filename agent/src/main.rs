//! `bizosaas-agent`: the runtime that executes an AgentCrew. The operator deploys it; the
//! full run API arrives with the agent-crew capability.

fn main() {
    let agents = bizosaas_crds::catalog::CATALOG.len();
    println!("bizosaas-agent {} ({agents} built-in agents)", env!("CARGO_PKG_VERSION"));
}
