//! Holds the compiled `csi.proto` against numbers taken from the official CSI v1 spec, so a typo
//! in a field number, enum value or RPC name fails here rather than on a cluster.

use csi_proto::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

fn csi_file() -> FileDescriptorProto {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .unwrap()
        .file
        .into_iter()
        .find(|f| f.package() == "csi.v1")
        .expect("csi.v1 is in the descriptor set")
}

/// Finds a message by its dotted path inside the package, e.g. `VolumeCapability.AccessMode`.
fn message(file: &FileDescriptorProto, path: &str) -> DescriptorProto {
    let mut parts = path.split('.');
    let first = parts.next().unwrap();
    let mut msg = file
        .message_type
        .iter()
        .find(|m| m.name() == first)
        .unwrap_or_else(|| panic!("no message {first}"))
        .clone();
    for part in parts {
        msg = msg
            .nested_type
            .iter()
            .find(|m| m.name() == part)
            .unwrap_or_else(|| panic!("no nested message {part} in {path}"))
            .clone();
    }
    msg
}

fn enum_values(e: &EnumDescriptorProto) -> Vec<(String, i32)> {
    e.value
        .iter()
        .map(|v| (v.name().to_string(), v.number()))
        .collect()
}

fn nested_enum(file: &FileDescriptorProto, path: &str, name: &str) -> Vec<(String, i32)> {
    enum_values(
        message(file, path)
            .enum_type
            .iter()
            .find(|e| e.name() == name)
            .unwrap_or_else(|| panic!("no enum {name} in {path}")),
    )
}

fn fields(file: &FileDescriptorProto, path: &str) -> Vec<(String, i32)> {
    message(file, path)
        .field
        .iter()
        .map(|f| (f.name().to_string(), f.number()))
        .collect()
}

fn owned(pairs: &[(&str, i32)]) -> Vec<(String, i32)> {
    pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

#[test]
fn create_volume_request_fields() {
    let file = csi_file();
    assert_eq!(
        fields(&file, "CreateVolumeRequest"),
        owned(&[
            ("name", 1),
            ("capacity_range", 2),
            ("volume_capabilities", 3),
            ("parameters", 4),
            ("secrets", 5),
            ("volume_content_source", 6),
            ("accessibility_requirements", 7),
            ("mutable_parameters", 8),
        ])
    );
    let msg = message(&file, "CreateVolumeRequest");
    let caps = msg.field.iter().find(|f| f.number() == 3).unwrap();
    assert_eq!(caps.label(), Label::Repeated);
    assert_eq!(caps.type_name(), ".csi.v1.VolumeCapability");
    let capacity = msg.field.iter().find(|f| f.number() == 2).unwrap();
    assert_eq!(capacity.r#type(), Type::Message);
    assert_eq!(
        fields(&file, "CapacityRange"),
        owned(&[("required_bytes", 1), ("limit_bytes", 2)])
    );
}

#[test]
fn volume_and_node_stage_fields() {
    let file = csi_file();
    assert_eq!(
        fields(&file, "Volume"),
        owned(&[
            ("capacity_bytes", 1),
            ("volume_id", 2),
            ("volume_context", 3),
            ("content_source", 4),
            ("accessible_topology", 5),
        ])
    );
    assert_eq!(
        fields(&file, "NodeStageVolumeRequest"),
        owned(&[
            ("volume_id", 1),
            ("publish_context", 2),
            ("staging_target_path", 3),
            ("volume_capability", 4),
            ("secrets", 5),
            ("volume_context", 6),
        ])
    );
    assert_eq!(
        fields(&file, "VolumeCapability"),
        owned(&[("block", 1), ("mount", 2), ("access_mode", 3)])
    );
}

#[test]
fn access_mode_values() {
    let file = csi_file();
    assert_eq!(
        nested_enum(&file, "VolumeCapability.AccessMode", "Mode"),
        owned(&[
            ("UNKNOWN", 0),
            ("SINGLE_NODE_WRITER", 1),
            ("SINGLE_NODE_READER_ONLY", 2),
            ("MULTI_NODE_READER_ONLY", 3),
            ("MULTI_NODE_SINGLE_WRITER", 4),
            ("MULTI_NODE_MULTI_WRITER", 5),
            ("SINGLE_NODE_SINGLE_WRITER", 6),
            ("SINGLE_NODE_MULTI_WRITER", 7),
        ])
    );
}

#[test]
fn controller_capability_values() {
    let file = csi_file();
    let values = nested_enum(&file, "ControllerServiceCapability.RPC", "Type");
    assert_eq!(
        values[..15],
        owned(&[
            ("UNKNOWN", 0),
            ("CREATE_DELETE_VOLUME", 1),
            ("PUBLISH_UNPUBLISH_VOLUME", 2),
            ("LIST_VOLUMES", 3),
            ("GET_CAPACITY", 4),
            ("CREATE_DELETE_SNAPSHOT", 5),
            ("LIST_SNAPSHOTS", 6),
            ("CLONE_VOLUME", 7),
            ("PUBLISH_READONLY", 8),
            ("EXPAND_VOLUME", 9),
            ("LIST_VOLUMES_PUBLISHED_NODES", 10),
            ("VOLUME_CONDITION", 11),
            ("GET_VOLUME", 12),
            ("SINGLE_NODE_MULTI_WRITER", 13),
            ("MODIFY_VOLUME", 14),
        ])[..]
    );
    assert_eq!(
        nested_enum(&file, "PluginCapability.Service", "Type")[..3],
        owned(&[
            ("UNKNOWN", 0),
            ("CONTROLLER_SERVICE", 1),
            ("VOLUME_ACCESSIBILITY_CONSTRAINTS", 2),
        ])[..]
    );
}

#[test]
fn services_and_rpcs() {
    let file = csi_file();
    let rpcs = |service: &str| -> Vec<String> {
        file.service
            .iter()
            .find(|s| s.name() == service)
            .unwrap_or_else(|| panic!("no service {service}"))
            .method
            .iter()
            .map(|m| m.name().to_string())
            .collect()
    };
    assert_eq!(
        rpcs("Identity"),
        ["GetPluginInfo", "GetPluginCapabilities", "Probe"]
    );
    let controller = rpcs("Controller");
    for rpc in [
        "CreateVolume",
        "DeleteVolume",
        "ControllerPublishVolume",
        "ControllerUnpublishVolume",
        "ValidateVolumeCapabilities",
        "ListVolumes",
        "GetCapacity",
        "ControllerGetCapabilities",
        "CreateSnapshot",
        "DeleteSnapshot",
        "ListSnapshots",
        "ControllerExpandVolume",
        "ControllerGetVolume",
        "ControllerModifyVolume",
    ] {
        assert!(
            controller.iter().any(|r| r == rpc),
            "Controller lacks {rpc}"
        );
    }
    assert_eq!(
        rpcs("Node"),
        [
            "NodeStageVolume",
            "NodeUnstageVolume",
            "NodePublishVolume",
            "NodeUnpublishVolume",
            "NodeGetVolumeStats",
            "NodeExpandVolume",
            "NodeGetCapabilities",
            "NodeGetInfo",
        ]
    );
}

/// The generated Rust types put bytes on the wire where the spec says: hand-encoded expectations.
#[test]
fn generated_types_encode_spec_field_numbers() {
    use csi_proto::v1::{CapacityRange, CreateVolumeRequest};
    let req = CreateVolumeRequest {
        name: "a".into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 1,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    // field 1 (len) "a"; field 2 (len) { field 1 (varint) 1 }
    assert_eq!(
        req.encode_to_vec(),
        [0x0a, 0x01, b'a', 0x12, 0x02, 0x08, 0x01]
    );
}
