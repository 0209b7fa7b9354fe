//! A small fake Kubernetes API server over HTTP on 127.0.0.1:0, kept for the faults a real API
//! server cannot be made to show on cue: a status code on one path, a request never answered,
//! one client partitioned from it, watches cut or expired, a delete no watch sees; and one
//! client's requests counted apart from the others'. Everything else meets a real one
//! (`kube_real`).
//!
//! Objects live per collection path (`/api/v1/nodes`, `/apis/storage.k8s.io/v1/volumeattachments`,
//! `/apis/coordination.k8s.io/v1/namespaces/NS/leases`, ...), in insertion order, so a test
//! controls list order. It supports GET (item, list, `watch=true`), POST (409 when the name
//! exists; `generateName`), PUT (409 on a stale `metadata.resourceVersion`), DELETE, and
//! injected failures or hangs by path prefix, for every client or for one named client (a
//! partition of one replica from the API server).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::broadcast;

const PLURALS: &[&str] = &[
    "nodes",
    "csinodes",
    "persistentvolumes",
    "persistentvolumeclaims",
    "volumeattachments",
    "volumesnapshotcontents",
    "storageclasses",
    "leases",
    "events",
];

#[derive(Debug, Clone)]
enum FaultAction {
    Status(u16),
    /// Never answer (a half-open connection, an API server behind a partition).
    Hang,
}

#[derive(Debug, Clone)]
struct Fault {
    prefix: String,
    method: Option<Method>,
    /// Only requests from the client of this name (see `FakeApi::client_named`).
    client: Option<String>,
    action: FaultAction,
    remaining: Option<usize>,
}

/// The header `client_named` clients send, so faults can pick one client out.
const CLIENT_HEADER: &str = "x-fake-client";

#[derive(Default)]
struct Store {
    collections: BTreeMap<String, Vec<(String, Value)>>,
    rv: u64,
    uid: u64,
    faults: Vec<Fault>,
    log: Vec<(String, String)>,
    /// Cancelled by `end_watches`/`expire_watches`: every open watch stream ends, after a
    /// 410 Gone event when `watches_expired` is set.
    watches_end: tokio_util::sync::CancellationToken,
    watches_expired: Arc<std::sync::atomic::AtomicBool>,
}

type Body = BoxBody<Bytes, Infallible>;

pub struct FakeApi {
    store: Arc<Mutex<Store>>,
    watch: broadcast::Sender<(String, String, Value)>,
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    json_response(code, &body)
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// (collection, Some(name)) for an item path, (collection, None) for a collection path.
fn split(path: &str) -> Option<(String, Option<String>)> {
    let last = path.rsplit('/').next()?;
    if PLURALS.contains(&last) {
        return Some((path.to_string(), None));
    }
    let (parent, name) = path.rsplit_once('/')?;
    let plural = parent.rsplit('/').next()?;
    PLURALS
        .contains(&plural)
        .then(|| (parent.to_string(), Some(name.to_string())))
}

fn kind_of(collection: &str) -> &'static str {
    match collection.rsplit('/').next().unwrap_or_default() {
        "nodes" => "Node",
        "csinodes" => "CSINode",
        "persistentvolumes" => "PersistentVolume",
        "volumeattachments" => "VolumeAttachment",
        "volumesnapshotcontents" => "VolumeSnapshotContent",
        "leases" => "Lease",
        "events" => "Event",
        _ => "Object",
    }
}

fn namespace_of(collection: &str) -> Option<String> {
    let mut parts = collection.split('/');
    while let Some(p) = parts.next() {
        if p == "namespaces" {
            return parts.next().map(str::to_string);
        }
    }
    None
}

impl Store {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Fills the server-side metadata and stores the object; returns the stored copy.
    fn insert(&mut self, collection: &str, mut obj: Value) -> Value {
        let rv = self.next_rv();
        self.uid += 1;
        let uid = format!("uid-{}", self.uid);
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("object has metadata");
        meta.insert("resourceVersion".into(), json!(rv));
        meta.entry("uid").or_insert(json!(uid));
        meta.entry("creationTimestamp")
            .or_insert(json!("2026-01-01T00:00:00Z"));
        if let Some(ns) = namespace_of(collection) {
            meta.insert("namespace".into(), json!(ns));
        }
        let name = meta["name"].as_str().unwrap().to_string();
        let items = self.collections.entry(collection.to_string()).or_default();
        match items.iter_mut().find(|(n, _)| n == &name) {
            Some(slot) => slot.1 = obj.clone(),
            None => items.push((name, obj.clone())),
        }
        obj
    }
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Mutex::new(Store::default()));
        let (watch, _) = broadcast::channel(1024);
        let accept = tokio::spawn({
            let (store, watch) = (Arc::clone(&store), watch.clone());
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (store, watch) = (Arc::clone(&store), watch.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (store, watch) = (Arc::clone(&store), watch.clone());
                            async move { Ok::<_, Infallible>(handle(store, watch, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        FakeApi {
            store,
            watch,
            addr,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig for this server into `dir` (for the `rds-csi` binary's
    /// `--kubeconfig`) and returns its path.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }

    /// A client whose requests carry `name`, for faults aimed at it alone.
    pub fn client_named(&self, name: &str) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().unwrap();
        let mut config = kube::Config::new(url);
        config
            .headers
            .push((CLIENT_HEADER.parse().unwrap(), name.parse().unwrap()));
        kube::Client::try_from(config).unwrap()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object (as another client would) and notifies watchers.
    pub fn put(&self, collection: &str, obj: Value) -> Value {
        let (stored, existed) = {
            let mut s = self.lock();
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            let existed = s
                .collections
                .get(collection)
                .is_some_and(|i| i.iter().any(|(n, _)| n == &name));
            (s.insert(collection, obj), existed)
        };
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        let _ = self
            .watch
            .send((collection.to_string(), kind.into(), stored.clone()));
        stored
    }

    pub fn delete(&self, collection: &str, name: &str) -> Option<Value> {
        let removed = {
            let mut s = self.lock();
            let items = s.collections.get_mut(collection)?;
            let at = items.iter().position(|(n, _)| n == name)?;
            items.remove(at).1
        };
        let _ = self
            .watch
            .send((collection.to_string(), "DELETED".into(), removed.clone()));
        Some(removed)
    }

    /// Removes an object without telling the watchers: a delete that happened while a watch
    /// was down, which only a new list shows.
    pub fn delete_unseen(&self, collection: &str, name: &str) {
        let mut s = self.lock();
        if let Some(items) = s.collections.get_mut(collection) {
            items.retain(|(n, _)| n != name);
        }
        s.rv += 1;
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.lock()
            .collections
            .get(collection)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .collections
            .get(collection)
            .map(|i| i.iter().map(|(_, v)| v.clone()).collect())
            .unwrap_or_default()
    }

    /// Fails requests whose path starts with `prefix` (and method, if given) with `status`,
    /// `times` times (None: until cleared).
    pub fn fail(&self, prefix: &str, method: Option<Method>, status: u16, times: Option<usize>) {
        self.add_fault(prefix, method, None, FaultAction::Status(status), times);
    }

    /// Never answers requests whose path starts with `prefix` (and method, if given), `times`
    /// times (None: until cleared).
    pub fn hang(&self, prefix: &str, method: Option<Method>, times: Option<usize>) {
        self.add_fault(prefix, method, None, FaultAction::Hang, times);
    }

    /// Never answers the named client's requests under `prefix` until cleared; other clients
    /// are served as usual.
    pub fn hang_client(&self, client: &str, prefix: &str) {
        self.add_fault(prefix, None, Some(client), FaultAction::Hang, None);
    }

    /// Fails the named client's requests under `prefix` with `status` until cleared.
    pub fn fail_client(&self, client: &str, prefix: &str, status: u16) {
        self.add_fault(
            prefix,
            None,
            Some(client),
            FaultAction::Status(status),
            None,
        );
    }

    fn add_fault(
        &self,
        prefix: &str,
        method: Option<Method>,
        client: Option<&str>,
        action: FaultAction,
        times: Option<usize>,
    ) {
        self.lock().faults.push(Fault {
            prefix: prefix.to_string(),
            method,
            client: client.map(str::to_string),
            action,
            remaining: times,
        });
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Ends every open watch stream (as an API server restart or a dropped connection does);
    /// watches opened afterwards work as before.
    pub fn end_watches(&self) {
        let mut s = self.lock();
        s.watches_end.cancel();
        s.watches_end = tokio_util::sync::CancellationToken::new();
        s.watches_expired = Arc::default();
    }

    /// Ends every open watch stream with a 410 Gone event, as an API server does when a watch
    /// was down so long that its resourceVersion is too old: the client must list again.
    pub fn expire_watches(&self) {
        let mut s = self.lock();
        s.watches_expired
            .store(true, std::sync::atomic::Ordering::SeqCst);
        s.watches_end.cancel();
        s.watches_end = tokio_util::sync::CancellationToken::new();
        s.watches_expired = Arc::default();
    }

    /// (method, path) of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.lock().log.clone()
    }
}

async fn handle(
    store: Arc<Mutex<Store>>,
    watch: broadcast::Sender<(String, String, Value)>,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let is_watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let client = req
        .headers()
        .get(CLIENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let action = {
        let mut s = store.lock().unwrap();
        let verb = if is_watch {
            "WATCH".to_string()
        } else {
            method.to_string()
        };
        s.log.push((verb, path.clone()));
        let fault = s.faults.iter_mut().find(|f| {
            path.starts_with(&f.prefix)
                && f.method.as_ref().is_none_or(|m| m == method)
                && f.client.as_ref().is_none_or(|c| Some(c) == client.as_ref())
                && f.remaining != Some(0)
        });
        fault.map(|f| {
            if let Some(n) = f.remaining.as_mut() {
                *n -= 1;
            }
            f.action.clone()
        })
    };
    match action {
        Some(FaultAction::Status(code)) => {
            return status(code, "InternalError", "injected failure")
        }
        Some(FaultAction::Hang) => std::future::pending::<()>().await,
        None => {}
    }
    let Some((collection, name)) = split(&path) else {
        return status(404, "NotFound", &format!("no route for {path}"));
    };
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body: Option<Value> = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut s = store.lock().unwrap();
    match (method, name) {
        (Method::GET, None) if is_watch => {
            let (ended, expired) = (s.watches_end.clone(), Arc::clone(&s.watches_expired));
            drop(s);
            let rx = watch.subscribe();
            let stream = futures_util::stream::unfold(Some(rx), move |rx| {
                let (collection, ended, expired) =
                    (collection.clone(), ended.clone(), Arc::clone(&expired));
                async move {
                    let mut rx = rx?;
                    loop {
                        let received = tokio::select! {
                            _ = ended.cancelled() => {
                                if !expired.load(std::sync::atomic::Ordering::SeqCst) {
                                    return None;
                                }
                                let gone = json!({"type": "ERROR", "object": {
                                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Failure", "reason": "Expired", "code": 410,
                                    "message": "too old resource version"}});
                                let line = format!("{gone}\n");
                                return Some((Ok(Frame::data(Bytes::from(line))), None));
                            }
                            r = rx.recv() => r,
                        };
                        match received {
                            Ok((c, kind, obj)) if c == collection => {
                                let line = format!("{}\n", json!({"type": kind, "object": obj}));
                                return Some((Ok(Frame::data(Bytes::from(line))), Some(rx)));
                            }
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        (Method::GET, None) => {
            let items: Vec<Value> = s
                .collections
                .get(&collection)
                .map(|i| i.iter().map(|(_, v)| v.clone()).collect())
                .unwrap_or_default();
            let list = json!({
                "apiVersion": "v1",
                "kind": format!("{}List", kind_of(&collection)),
                "metadata": {"resourceVersion": s.rv.to_string()},
                "items": items,
            });
            json_response(200, &list)
        }
        (Method::GET, Some(name)) => {
            match s
                .collections
                .get(&collection)
                .and_then(|i| i.iter().find(|(n, _)| n == &name))
            {
                Some((_, v)) => json_response(200, v),
                None => status(404, "NotFound", &format!("{name} not found")),
            }
        }
        (Method::POST, None) => {
            let Some(mut obj) = body else {
                return status(400, "BadRequest", "no JSON body");
            };
            if obj["metadata"]["name"].as_str().is_none() {
                let Some(prefix) = obj["metadata"]["generateName"].as_str().map(str::to_string)
                else {
                    return status(422, "Invalid", "name or generateName is required");
                };
                let n = s.next_rv();
                obj["metadata"]["name"] = json!(format!("{prefix}{n}"));
            }
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            let exists = s
                .collections
                .get(&collection)
                .is_some_and(|i| i.iter().any(|(n, _)| n == &name));
            if exists {
                return status(409, "AlreadyExists", &format!("{name} already exists"));
            }
            let stored = s.insert(&collection, obj);
            let _ = watch.send((collection, "ADDED".into(), stored.clone()));
            json_response(201, &stored)
        }
        (Method::PUT, Some(name)) => {
            let Some(obj) = body else {
                return status(400, "BadRequest", "no JSON body");
            };
            let Some(current) = s
                .collections
                .get(&collection)
                .and_then(|i| i.iter().find(|(n, _)| n == &name))
                .map(|(_, v)| v.clone())
            else {
                return status(404, "NotFound", &format!("{name} not found"));
            };
            let sent = obj["metadata"]["resourceVersion"].as_str();
            if sent.is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str()) {
                return status(409, "Conflict", "the object has been modified");
            }
            let stored = s.insert(&collection, obj);
            let _ = watch.send((collection, "MODIFIED".into(), stored.clone()));
            json_response(200, &stored)
        }
        (Method::DELETE, Some(name)) => {
            let Some(items) = s.collections.get_mut(&collection) else {
                return status(404, "NotFound", &format!("{name} not found"));
            };
            let Some(at) = items.iter().position(|(n, _)| n == &name) else {
                return status(404, "NotFound", &format!("{name} not found"));
            };
            let removed = items.remove(at).1;
            let _ = watch.send((collection, "DELETED".into(), removed.clone()));
            json_response(200, &removed)
        }
        _ => status(405, "MethodNotAllowed", "not supported"),
    }
}
