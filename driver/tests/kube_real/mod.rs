//! A real kube-apiserver (with etcd) of the test's own (`e2e::k8s::StandaloneApiServer`), with
//! the test's objects written as another client would write them: created, then their status
//! through the status subresource, as controllers and kubelets do. The driver code under test
//! meets what Kubernetes really serves (validation, defaulting, server-set metadata, list
//! order, watch events); about 5 s to start, stopped and removed when dropped.

#![allow(dead_code)]

use std::path::PathBuf;

use e2e::k8s::StandaloneApiServer;
use http::{Method, Request};
use serde_json::{json, Value};

pub struct RealApi {
    server: StandaloneApiServer,
    client: kube::Client,
}

impl RealApi {
    pub async fn start() -> RealApi {
        Self::start_with(true).await
    }

    /// A cluster without the VolumeSnapshot CRDs.
    pub async fn without_snapshot_crds() -> RealApi {
        Self::start_with(false).await
    }

    async fn start_with(snapshot_crds: bool) -> RealApi {
        let server = StandaloneApiServer::start_with(snapshot_crds)
            .await
            .unwrap_or_else(|e| panic!("starting a real API server: {e:#}"));
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        RealApi { server, client }
    }

    /// A client with the cluster admin's credentials.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin's kubeconfig, for the `rds-csi` binary's `--kubeconfig`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.server.kubeconfig().to_path_buf()
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, u16> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
            .unwrap();
        match self.client.request::<Value>(request).await {
            Ok(v) => Ok(v),
            Err(kube::Error::Api(status)) => Err(status.code),
            Err(e) => panic!("{path}: {e}"),
        }
    }

    /// Creates the object (its namespace too, if missing), or replaces it when it exists,
    /// then writes its `status`, if it has one. Returns the object as stored.
    pub async fn put(&self, collection: &str, mut obj: Value) -> Value {
        if let Some(ns) = namespace_of(collection) {
            let _ = self
                .call(
                    Method::POST,
                    "/api/v1/namespaces",
                    Some(
                        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    ),
                )
                .await;
        }
        let status = obj.as_object_mut().and_then(|o| o.remove("status"));
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let item = format!("{collection}/{name}");
        let mut stored = match self.call(Method::POST, collection, Some(&obj)).await {
            Ok(v) => v,
            Err(409) => {
                let current = self.get(collection, &name).await.unwrap();
                obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                self.call(Method::PUT, &item, Some(&obj))
                    .await
                    .unwrap_or_else(|code| panic!("replacing {item}: {code}"))
            }
            Err(code) => panic!("creating {item}: {code}: {obj}"),
        };
        if let Some(status) = status {
            stored["status"] = status;
            stored = self
                .call(Method::PUT, &format!("{item}/status"), Some(&stored))
                .await
                .unwrap_or_else(|code| panic!("writing the status of {item}: {code}"));
        }
        stored
    }

    /// Replaces an object as read with `get` (its resourceVersion guards the write).
    pub async fn replace(&self, collection: &str, obj: Value) -> Value {
        let item = format!("{collection}/{}", obj["metadata"]["name"].as_str().unwrap());
        self.call(Method::PUT, &item, Some(&obj))
            .await
            .unwrap_or_else(|code| panic!("replacing {item}: {code}"))
    }

    /// `put`, in a later second than `earlier` (an object `put` returned) was created: the API
    /// server's creation times have whole seconds, and the driver compares objects' ages.
    pub async fn put_after(&self, earlier: &Value, collection: &str, obj: Value) -> Value {
        let created = created_at(earlier);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::SystemTime::now() < created + std::time::Duration::from_secs(1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the clock stands still"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.put(collection, obj).await
    }

    pub async fn get(&self, collection: &str, name: &str) -> Option<Value> {
        match self
            .call(Method::GET, &format!("{collection}/{name}"), None)
            .await
        {
            Ok(v) => Some(v),
            Err(404) => None,
            Err(code) => panic!("reading {collection}/{name}: {code}"),
        }
    }

    pub async fn list(&self, collection: &str) -> Vec<Value> {
        let list = self
            .call(Method::GET, collection, None)
            .await
            .unwrap_or_else(|code| panic!("listing {collection}: {code}"));
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// The sum of the API server's metric `name` over its series with all of `labels`
    /// (`key="value"`).
    async fn metric(&self, name: &str, labels: &[String]) -> u64 {
        let request = Request::get("/metrics").body(Vec::new()).unwrap();
        let metrics = self.client.request_text(request).await.unwrap();
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// How many watches of `resource` the API server is serving now, its internal clients'
    /// included.
    pub async fn watches(&self, resource: &str) -> u64 {
        let labels = [format!("resource=\"{resource}\""), "verb=\"WATCH\"".into()];
        self.metric("apiserver_longrunning_requests", &labels).await
    }

    /// How many `verb` requests (`LIST`, `GET`, ...) for `resource` the API server has answered.
    pub async fn requests(&self, resource: &str, verb: &str) -> u64 {
        let labels = [
            format!("resource=\"{resource}\""),
            format!("verb=\"{verb}\""),
        ];
        self.metric("apiserver_request_total", &labels).await
    }

    /// Waits (30 s at most) until the API server serves more watches of `resource` than
    /// `before`: a client's watch is open, so what happens next reaches it.
    pub async fn wait_for_watch(&self, resource: &str, before: u64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.watches(resource).await <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new watch of {resource} opened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Deletes the object at once (no grace period); Some(it) when it existed.
    pub async fn delete(&self, collection: &str, name: &str) -> Option<Value> {
        let body = json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0});
        match self
            .call(Method::DELETE, &format!("{collection}/{name}"), Some(&body))
            .await
        {
            Ok(v) => Some(v),
            Err(404) => None,
            Err(code) => panic!("deleting {collection}/{name}: {code}"),
        }
    }
}

/// The object's `metadata.creationTimestamp`.
pub fn created_at(obj: &Value) -> std::time::SystemTime {
    obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .unwrap_or_else(|| panic!("no creation time: {obj}"))
        .into()
}

fn namespace_of(collection: &str) -> Option<&str> {
    let mut parts = collection.split('/');
    parts.find(|p| *p == "namespaces")?;
    parts.next()
}
