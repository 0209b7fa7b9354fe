//! README's capability list against the binary: what its "CSI capabilities" section lists for
//! the plugin, the controller and the node is exactly what GetPluginCapabilities,
//! ControllerGetCapabilities and NodeGetCapabilities return, and what it lists as not
//! advertised is not.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::identity_server::Identity;
use csi_proto::v1::node_server::Node;
use csi_proto::v1::*;
use rds_csi::controller::ControllerService;
use rds_csi::identity::IdentityService;
use rds_csi::node::connector::LoopConnector;
use rds_csi::node::{NodeConfig, NodeService};
use rds_csi::rds::{HostKeyPolicy, SshConfig};
use tonic::Request;

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The backticked capability names on the list item of the capability section that starts with `label`.
fn listed(readme: &str, label: &str) -> BTreeSet<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("CSI capabilities"))
        .expect("README has a `## CSI capabilities` section");
    // A list item may wrap onto indented lines.
    let mut item = String::new();
    let mut inside = false;
    for line in section.lines() {
        if let Some(text) = line.strip_prefix("- ") {
            inside = text.starts_with(label);
        } else if !line.starts_with("  ") {
            inside = false;
        }
        if inside {
            item.push_str(line);
            item.push(' ');
        }
    }
    assert!(!item.is_empty(), "README lists no `- {label}` item");
    // Capability names only (not the flags an item may mention).
    item.split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .map(str::to_string)
        .collect()
}

fn names<T: Copy>(items: &[T], name: impl Fn(T) -> &'static str) -> BTreeSet<String> {
    items.iter().map(|t| name(*t).to_string()).collect()
}

async fn plugin_capabilities() -> BTreeSet<String> {
    let caps = IdentityService::new("rds.csi.srvlab.io", true, None)
        .get_plugin_capabilities(Request::new(GetPluginCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let mut out = BTreeSet::new();
    for c in caps {
        match c.r#type {
            Some(plugin_capability::Type::Service(s)) => {
                out.insert(s.r#type().as_str_name().to_string());
            }
            Some(plugin_capability::Type::VolumeExpansion(v)) => {
                out.insert(format!("VOLUME_EXPANSION_{}", v.r#type().as_str_name()));
            }
            None => panic!("a plugin capability without a type"),
        }
    }
    out
}

async fn controller_capabilities() -> BTreeSet<String> {
    // Nothing is contacted: the capabilities come without the RDS.
    let ssh = SshConfig::new(
        "127.0.0.1",
        1,
        "admin",
        common::new_key(),
        HostKeyPolicy::InsecureSkipVerify,
    );
    let svc = ControllerService::new(
        rds_csi::server::rds_client(ssh, true),
        common::controller::config(),
    );
    let caps = svc
        .controller_get_capabilities(Request::new(ControllerGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let types: Vec<_> = caps
        .iter()
        .map(|c| match &c.r#type {
            Some(controller_service_capability::Type::Rpc(r)) => r.r#type(),
            None => panic!("a controller capability without a type"),
        })
        .collect();
    names(&types, |t| t.as_str_name())
}

async fn node_capabilities() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let svc = NodeService::new(
        NodeConfig::new("n", dir.path().join("state")),
        Arc::new(LoopConnector::new(dir.path())),
    );
    let caps = svc
        .node_get_capabilities(Request::new(NodeGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let types: Vec<_> = caps
        .iter()
        .map(|c| match &c.r#type {
            Some(node_service_capability::Type::Rpc(r)) => r.r#type(),
            None => panic!("a node capability without a type"),
        })
        .collect();
    names(&types, |t| t.as_str_name())
}

#[tokio::test]
async fn readme_lists_exactly_the_advertised_capabilities() {
    let text = readme();
    let advertised = [
        ("Plugin", plugin_capabilities().await),
        ("Controller", controller_capabilities().await),
        ("Node", node_capabilities().await),
    ];
    for (label, caps) in &advertised {
        assert!(!caps.is_empty(), "{label}");
        assert_eq!(&listed(&text, label), caps, "README's `- {label}` item");
    }
    let not_advertised = listed(&text, "Not advertised");
    for name in ["MODIFY_VOLUME", "GROUP_CONTROLLER_SERVICE"] {
        assert!(
            not_advertised.contains(name),
            "README says why {name} is absent"
        );
    }
    for (label, caps) in &advertised {
        let both: Vec<_> = caps.intersection(&not_advertised).collect();
        assert!(both.is_empty(), "{label} advertises {both:?}");
    }
}
