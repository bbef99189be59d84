//! What the tests take from a rendering: the pod that carries spool, its
//! spool container and volumes, the rendered spool.toml, and the image's
//! own settings from the Dockerfile.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::render::str_of;

/// What the test takes from one rendering.
pub struct Rendered {
    pub container: Value,
    pub native: bool,
    pub volumes: BTreeMap<String, Value>,
    pub config_toml: String,
    pub checksum: String,
}

/// The demo Deployment's pod, its spool container and the ConfigMap its
/// `spool-config` volume names.
pub fn take_spool(objects: &[Value], container_name: &str) -> Rendered {
    let pods: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .map(|o| &o["spec"]["template"])
        .collect();
    let (pod, container, native) = pods
        .iter()
        .find_map(|pod| {
            let spec = &pod["spec"];
            let find = |list: &str| {
                spec[list]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"] == container_name)
                    .cloned()
            };
            find("initContainers")
                .map(|c| (*pod, c, true))
                .or_else(|| find("containers").map(|c| (*pod, c, false)))
        })
        .expect("a Deployment with the spool container");
    assert_eq!(
        pod["spec"]["enableServiceLinks"], false,
        "the chart's pods set enableServiceLinks: false"
    );
    if native {
        assert_eq!(container["restartPolicy"], "Always", "a native sidecar");
    } else {
        assert!(container.get("restartPolicy").is_none());
    }
    let volumes: BTreeMap<String, Value> = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (str_of(&v["name"], "volume name").to_owned(), v.clone()))
        .collect();
    let config_map = str_of(
        &volumes["spool-config"]["configMap"]["name"],
        "spool-config's ConfigMap",
    );
    let config_toml = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == config_map)
        .map(|o| str_of(&o["data"]["spool.toml"], "spool.toml").to_owned())
        .unwrap_or_else(|| panic!("no ConfigMap {config_map}"));
    let checksum = str_of(
        &pod["metadata"]["annotations"]["checksum/spool-config"],
        "the checksum annotation",
    )
    .to_owned();
    Rendered {
        container,
        native,
        volumes,
        config_toml,
        checksum,
    }
}

fn dockerfile() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap()
}

/// The image's `ENV NAME=value` lines, which the container's environment
/// starts from.
pub fn dockerfile_env() -> Vec<(String, String)> {
    dockerfile()
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .map(|kv| {
            let (k, v) = kv.trim().split_once('=').expect("ENV NAME=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The image's `USER uid:gid`, from the Dockerfile.
pub fn dockerfile_user() -> (i64, i64) {
    let text = dockerfile();
    let user = text
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the Dockerfile");
    let (uid, gid) = user.trim().split_once(':').expect("USER uid:gid");
    (uid.parse().unwrap(), gid.parse().unwrap())
}
