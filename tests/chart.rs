//! The Helm chart's spool container, run for real: render charts/spool with
//! the pinned helm that scripts/check-chart caches, take the container's
//! command, args and env and the rendered spool.toml, start the spool
//! binary with exactly those against a throwaway Postgres, and check that
//! every probe the chart declares answers 200 on the port it names. The
//! running spool's /metrics must hold every metric and label the chart's
//! alerts and dashboard query (chart/monitoring.rs), and the schema's
//! `config` must know exactly spool's configuration keys
//! (chart/config_keys.rs).
//!
//! The tools come from scripts/check-chart, which scripts/test runs first:
//! `$SPOOL_TOOLS_DIR/bin/helm3`, `helm4` and `chart-python` (default
//! `~/.cache/spool-tools`). Missing tools fail the test, they do not skip
//! it: a chart test that silently ran nothing would look green.
//!
//! helm prints YAML, and this crate has no YAML parser among its
//! dependencies (serde_yaml is archived, its forks young or unsound), so
//! the rendered stream goes through PyYAML in check-chart's venv (a pinned
//! dependency of kubernetes-validate) and comes back as JSON, which
//! serde_json reads.

mod support;

#[path = "chart/config_keys.rs"]
mod config_keys;
#[path = "chart/monitoring.rs"]
mod monitoring;
#[path = "chart/pod.rs"]
mod pod;
#[path = "chart/render.rs"]
mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pod::{Rendered, dockerfile_env, dockerfile_user, take_spool};
use render::{render, str_of, values};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::TestPg;
use support::process::free_port;

/// Runs the rendered container and checks its probes; `label` names the case.
async fn run_rendered(label: &str, rendered: Rendered, queries: &[(String, String)]) {
    let c = &rendered.container;
    let pg = TestPg::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = "chart-test-token-0123456789";

    // A config change rolls the pods: the annotation is the ConfigMap's sha256.
    assert_eq!(
        rendered.checksum,
        format!("{:x}", Sha256::digest(rendered.config_toml.as_bytes())),
        "{label}: checksum/spool-config is not the rendered spool.toml's sha256"
    );

    // The securityContext: the image's numeric user, nothing writable.
    let sc = &c["securityContext"];
    let (uid, gid) = dockerfile_user();
    assert_eq!(
        sc["runAsUser"], uid,
        "{label}: runAsUser matches the Dockerfile"
    );
    assert_eq!(
        sc["runAsGroup"], gid,
        "{label}: runAsGroup matches the Dockerfile"
    );
    for (key, want) in [
        ("runAsNonRoot", true),
        ("readOnlyRootFilesystem", true),
        ("allowPrivilegeEscalation", false),
    ] {
        assert_eq!(sc[key], want, "{label}: securityContext.{key}");
    }
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");

    // Ports by name, as the probes refer to them.
    let ports: BTreeMap<&str, u16> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "port name"),
                p["containerPort"].as_u64().unwrap() as u16,
            )
        })
        .collect();

    // The mounts: each volume's mountPath becomes a directory under `dir`,
    // filled as the kubelet would (the ConfigMap's spool.toml, the Secrets'
    // items at their paths).
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let mut secret_files: Vec<PathBuf> = Vec::new();
    for m in c["volumeMounts"].as_array().expect("volumeMounts") {
        let name = str_of(&m["name"], "mount name");
        let target = dir.path().join("mounts").join(name);
        std::fs::create_dir_all(&target).unwrap();
        let volume = &rendered.volumes[name];
        if volume.get("configMap").is_some() {
            std::fs::write(target.join("spool.toml"), &rendered.config_toml).unwrap();
        }
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for item in source["secret"]["items"].as_array().into_iter().flatten() {
                secret_files.push(target.join(str_of(&item["path"], "item path")));
            }
        }
        mounts.push((str_of(&m["mountPath"], "mountPath").to_owned(), target));
    }
    // Rewritten: paths under a mountPath point at the directory standing in
    // for it, since this process runs outside a pod.
    let rewrite = |text: &str| -> String {
        for (mount, target) in &mounts {
            if let Some(rest) = text.strip_prefix(mount.as_str()) {
                return format!("{}{rest}", target.display());
            }
        }
        text.to_owned()
    };

    // Exactly the container's environment (nothing inherited from this
    // process), with mounted paths rewritten; the two secret files get the
    // test database's URL and a token.
    let mut env: Vec<(String, String)> = dockerfile_env();
    assert!(
        env.iter()
            .any(|(k, v)| k == "SPOOL_DATABASE__EMBEDDED" && v == "false"),
        "{label}: the image turns the embedded Postgres off"
    );
    for e in c["env"].as_array().expect("env") {
        let name = str_of(&e["name"], "env name").to_owned();
        let value = rewrite(str_of(
            &e["value"],
            "env value (valueFrom is not supported here)",
        ));
        match name.as_str() {
            "SPOOL_DATABASE_URL_FILE" => std::fs::write(&value, format!("{}\n", pg.url)).unwrap(),
            "SPOOL_ADMIN_TOKEN_FILE" => std::fs::write(&value, format!("{token}\n")).unwrap(),
            _ => {}
        }
        env.push((name, value));
    }
    // Not the pod's: the test clusters run with fsync off, for speed, and
    // spool refuses writes on such a database unless told it is throwaway.
    env.push(("SPOOL_DATABASE__ALLOW_NON_DURABLE".into(), "true".into()));
    for file in &secret_files {
        assert!(
            file.exists(),
            "{label}: {} is mounted but no SPOOL_*_FILE variable names it",
            file.display()
        );
    }

    // spool.toml: the listen addresses as rendered must be the declared
    // container ports. Then they are rewritten to free loopback ports: the
    // chart's fixed ports may be taken on this machine (tests run in
    // parallel), and a test must not listen on 0.0.0.0.
    let config_path = mounts
        .iter()
        .find(|(mount, _)| rendered_arg_has(c, mount))
        .map(|(_, target)| target.join("spool.toml"))
        .expect("the config file is under a mount");
    let mut config: toml::Table = rendered.config_toml.parse().expect("spool.toml is TOML");
    // A file the configuration names must be on a volume the container
    // mounts, or spool could not read it in the pod.
    if let Some(ca) = config
        .get_mut("database")
        .and_then(|d| d.get_mut("ca_file"))
    {
        let path = ca.as_str().unwrap().to_owned();
        let moved = rewrite(&path);
        assert_ne!(
            moved, path,
            "{label}: database.ca_file {path} is under no volumeMount"
        );
        *ca = moved.into();
    }
    let server = config["server"].as_table_mut().expect("[server]");
    let port_of = |key: &str, server: &toml::Table| -> u16 {
        let addr: std::net::SocketAddr = server[key].as_str().unwrap().parse().unwrap();
        addr.port()
    };
    assert_eq!(
        Some(&port_of("admin_listen", server)),
        ports.get("spool-admin"),
        "{label}: server.admin_listen is the declared spool-admin port"
    );
    if let Some(data) = ports.get("spool-data") {
        assert_eq!(port_of("listen", server), *data, "{label}: server.listen");
    }
    let data = free_port();
    let admin = free_port();
    server.insert("listen".into(), data.to_string().into());
    server.insert("admin_listen".into(), admin.to_string().into());
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();

    // The command: the image's binary is this build's.
    let command: Vec<&str> = c["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|v| str_of(v, "command"))
        .collect();
    assert_eq!(
        command,
        ["/usr/local/bin/spool"],
        "{label}: the image's binary"
    );
    let args: Vec<String> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|v| rewrite(str_of(v, "arg")))
        .collect();
    // The image's WORKDIR, empty: spool must write nothing there (the root
    // filesystem is read-only in the pod and has no emptyDir).
    let workdir = dir.path().join("workdir");
    std::fs::create_dir(&workdir).unwrap();
    let log = dir.path().join("spool.log");
    let mut child = Command::new(support::process::spool_binary())
        .args(&args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&workdir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start spool");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let client = support::TestClient::new(data, admin);
    let get = |path: String| {
        let client = client.clone();
        async move {
            client
                .try_send(admin, http::Method::GET, &path, &[], bytes::Bytes::new())
                .await
        }
    };

    // Each declared probe, in the kubelet's order: startup until it passes
    // (within its own budget, at most a minute here), then liveness and
    // readiness; each an HTTP GET on the port it names.
    let probe = |key: &str| -> Option<(String, u16)> {
        let p = c.get(key)?;
        let http_get = &p["httpGet"];
        assert_eq!(http_get["scheme"], "HTTP", "{label}: {key} scheme");
        let port = ports[str_of(&http_get["port"], "probe port name")];
        assert_eq!(
            port, ports["spool-admin"],
            "{label}: {key} is on the admin port"
        );
        Some((str_of(&http_get["path"], "probe path").to_owned(), port))
    };
    let mut checked = Vec::new();
    if let Some((path, _)) = probe("startupProbe") {
        let p = &c["startupProbe"];
        let budget = p["periodSeconds"].as_u64().unwrap() * p["failureThreshold"].as_u64().unwrap();
        let passed = support::eventually(Duration::from_secs(budget.min(60)), || async {
            get(path.clone()).await.is_ok_and(|r| r.status == 200)
        })
        .await;
        assert!(
            passed,
            "{label}: startupProbe {path} never answered 200; log:\n{}",
            log_text()
        );
        checked.push(format!("startupProbe {path}"));
    }
    for key in ["livenessProbe", "readinessProbe"] {
        let Some((path, _)) = probe(key) else {
            continue;
        };
        let passed = support::eventually(Duration::from_secs(10), || async {
            get(path.clone()).await.is_ok_and(|r| r.status == 200)
        })
        .await;
        assert!(
            passed,
            "{label}: {key} {path} did not answer 200; log:\n{}",
            log_text()
        );
        checked.push(format!("{key} {path}"));
    }
    assert_eq!(
        checked.len(),
        3,
        "{label}: the chart declares three probes: {checked:?}"
    );

    // And it does its job: the token from the Secret file guards /admin,
    // and a write on the demo route commits to the database from the URL file.
    let routes =
        |token: Option<&'static str>| client.admin(http::Method::GET, "/admin/routes", token, "");
    assert_eq!(
        routes(None).await.status,
        401,
        "{label}: /admin without the token"
    );
    assert_eq!(
        routes(Some(token)).await.status,
        200,
        "{label}: /admin with the token"
    );
    assert_eq!(
        client.post("/demo/orders", "{}").await.status,
        202,
        "{label}: a write"
    );
    assert_eq!(pg.scalar("SELECT count(*) FROM spool_message").await, 1);

    // The chart's alerts and dashboard query only what this spool exports,
    // once it has taken a write and answered a read (the demo sink is not
    // there: a miss). A series appears at its first use, so this is after.
    let read = client
        .send(http::Method::GET, "/demo/orders", &[], bytes::Bytes::new())
        .await;
    assert!(
        read.status.is_server_error(),
        "{label}: a read of the absent sink: {}",
        read.status
    );
    let metrics = client.admin_get("/metrics").await;
    assert_eq!(metrics.status, 200, "{label}: /metrics");
    let problems = monitoring::unbacked(queries, &String::from_utf8_lossy(&metrics.body));
    assert!(
        problems.is_empty(),
        "{label}: the chart's alerts and dashboard query what spool does not export:\n{}",
        problems.join("\n")
    );

    // The runbook's `spool ctl`, as `kubectl exec` runs it: the container's
    // environment (its token file) and the rendered config file.
    let ctl = Command::new(support::process::spool_binary())
        .arg("--config")
        .arg(&config_path)
        .args(["ctl", "routes"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&workdir)
        .output()
        .expect("run spool ctl");
    assert!(
        ctl.status.success(),
        "{label}: spool ctl routes in the container's environment: {}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    let answer: Value = serde_json::from_slice(&ctl.stdout).expect("spool ctl prints JSON");
    assert!(
        answer["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["route"] == "demo")),
        "{label}: spool ctl routes: {answer}"
    );

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{label}: spool exited {status} on SIGTERM; log:\n{}",
        log_text()
    );
    let left: Vec<_> = std::fs::read_dir(&workdir).unwrap().collect();
    assert!(
        left.is_empty(),
        "{label}: spool wrote into its working directory: {left:?}"
    );
    assert!(!log_text().contains(token), "{label}: the token was logged");
}

/// Whether one of the container's args lies under `mount`.
fn rendered_arg_has(container: &Value, mount: &str) -> bool {
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|a| a.starts_with(mount))
}

/// One case: a helm, values files and extra flags.
async fn case(helm: &str, file: &str, extra: &[&str], native: bool) {
    let values = values(file);
    let mut args = vec!["-f", values.as_str(), "--kube-version", "1.31.0"];
    args.extend_from_slice(extra);
    let objects = render(helm, &args);
    let rendered = take_spool(&objects, "spool");
    assert_eq!(rendered.native, native, "{helm} {file}: nativeSidecar");
    if file == "full-config-values.yaml" {
        // It sets every key the schema allows, or it would not show that
        // spool takes each of them.
        let config: toml::Table = rendered.config_toml.parse().expect("spool.toml is TOML");
        let set = config_keys::toml_paths(&config);
        let unset: Vec<String> = config_keys::schema_paths(&render::schema())
            .difference(&set)
            .cloned()
            .collect();
        assert!(
            unset.is_empty(),
            "{helm}: ci/{file} leaves keys the schema allows unset: {unset:?}"
        );
    }
    let queries = monitoring::queries(helm);
    run_rendered(&format!("{helm} {file}"), rendered, &queries).await;
}

#[tokio::test]
async fn the_demo_container_runs_as_rendered_by_helm_3() {
    case("helm3", "demo-values.yaml", &[], true).await;
}

#[tokio::test]
async fn the_demo_container_runs_as_rendered_by_helm_4() {
    case("helm4", "demo-values.yaml", &[], true).await;
}

#[tokio::test]
async fn the_fallback_container_runs_as_rendered() {
    case("helm3", "demo-no-native-sidecar-values.yaml", &[], false).await;
}

/// Every configuration key the schema allows, as helm 4 renders it (its
/// toToml is the one that needed whole numbers turned back into integers).
#[tokio::test]
async fn every_configuration_key_the_schema_allows_is_accepted_by_spool() {
    for helm in ["helm3", "helm4"] {
        case(
            helm,
            "full-config-values.yaml",
            &["--set", "demo.enabled=true"],
            true,
        )
        .await;
    }
}
