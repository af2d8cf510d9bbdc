//! deploy/kubernetes: every manifest passes a Kubernetes schema validator
//! (the `kubernetes-validate` Python package, pinned in scripts/test.sh),
//! the validator rejects a broken manifest (so a pass means something),
//! and the ConfigMap's TOML and its render script produce a config the
//! built binary's `turnpike config check` accepts.
//!
//! The validator is found through `TURNPIKE_K8S_VALIDATE` (its path; set by
//! scripts/test.sh), else `target/k8s-venv/bin/kubernetes-validate`. Without
//! it the schema tests print SKIPPED, unless they run as root or with
//! `TURNPIKE_NETNS_REQUIRED=1` (CI, scripts/test.sh): then they fail.

#![allow(clippy::unwrap_used, reason = "a test: unwrap is its assertion")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Kubernetes versions the manifests are validated against: the newest
/// the pinned kubernetes-validate ships schemas for, and the oldest still
/// in wide use (1.31: the manifests use nothing newer).
const K8S_VERSIONS: &[&str] = &["1.37.0", "1.31.0"];

/// The manifests, relative to deploy/kubernetes, with the kinds in each.
const MANIFESTS: &[(&str, &[&str])] = &[
    ("namespace.yaml", &["Namespace"]),
    ("configmap.yaml", &["ConfigMap"]),
    ("secret.yaml", &["Secret"]),
    ("daemonset.yaml", &["DaemonSet"]),
    ("pdb.yaml", &["PodDisruptionBudget"]),
    ("service.yaml", &["Service"]),
    ("optional/redis.yaml", &["Service", "Deployment"]),
];

/// Files whose kind is a CRD or a tool's (no schema in the validator).
const NO_SCHEMA: &[(&str, &str, &str)] = &[
    (
        "servicemonitor.yaml",
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
    ),
    (
        "kustomization.yaml",
        "kustomize.config.k8s.io/v1beta1",
        "Kustomization",
    ),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap()
}

fn required() -> bool {
    if std::env::var_os("TURNPIKE_NETNS_REQUIRED").is_some_and(|v| v == "1") {
        return true;
    }
    // Root runs everything (scripts/test.sh, CI): see tests/common/netns.rs.
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

/// The validator, or `None` after a loud SKIPPED (a panic when required).
fn validator() -> Option<PathBuf> {
    let path = match std::env::var_os("TURNPIKE_K8S_VALIDATE") {
        Some(p) => PathBuf::from(p),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/k8s-venv/bin/kubernetes-validate")
        }
    };
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "kubernetes-validate not found at {} (scripts/test.sh installs it; \
         TURNPIKE_K8S_VALIDATE gives its path)",
        path.display()
    );
    assert!(
        !required(),
        "the Kubernetes manifest validator is required (root or TURNPIKE_NETNS_REQUIRED=1): {why}"
    );
    eprintln!(
        "\n########################################################################\n\
         ## SKIPPED: {}\n## {why}\n## NOTHING WAS VALIDATED. Run scripts/test.sh.\n\
         ########################################################################\n",
        std::thread::current()
            .name()
            .unwrap_or("kubernetes_manifests")
    );
    None
}

fn validate(bin: &Path, file: &Path) -> Output {
    validate_for(bin, file, K8S_VERSIONS[0])
}

fn validate_for(bin: &Path, file: &Path, version: &str) -> Output {
    Command::new(bin)
        .args(["--strict", "--kubernetes-version", version])
        .arg(file)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schema() {
    let Some(bin) = validator() else { return };
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        pinned_version(),
        "the version scripts/test.sh pins"
    );
    for version in K8S_VERSIONS {
        for (name, kinds) in MANIFESTS {
            let out = validate_for(&bin, &dir().join(name), version);
            let all = text(&out);
            assert!(out.status.success(), "{name} ({version}): {all}");
            // One "passed" line per resource of the file: nothing skipped.
            for kind in *kinds {
                let line = format!("passed for resource {}/", kind.to_ascii_lowercase());
                assert!(
                    all.contains(&line),
                    "{name} ({version}): no {line:?} in {all}"
                );
            }
            assert_eq!(
                all.matches(" passed for resource ").count(),
                kinds.len(),
                "{name}: {all}"
            );
            let minor = version.rsplit_once('.').unwrap().0;
            assert!(all.contains(&format!("against version {minor}")), "{all}");
            assert!(!all.contains("WARN"), "{name} ({version}): {all}");
        }
    }
}

#[test]
fn the_validator_rejects_a_broken_manifest() {
    let Some(bin) = validator() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // The real DaemonSet with one field of the wrong type, then with one
    // unknown field (--strict): each must fail.
    let ds = read("daemonset.yaml");
    let cases = [
        (
            "wrong-type.yaml",
            ds.replace("hostNetwork: true", "hostNetwork: \"yes\""),
        ),
        (
            "unknown-field.yaml",
            ds.replace(
                "dnsPolicy: ClusterFirstWithHostNet",
                "dnsPolicy: ClusterFirstWithHostNet\n      hostNetworking: true",
            ),
        ),
        (
            "bad-port.yaml",
            ds.replace("containerPort: 9641", "containerPort: http-port"),
        ),
    ];
    for (name, body) in cases {
        assert_ne!(body, ds, "{name}: the mutation changed nothing");
        let f = tmp.path().join(name);
        std::fs::write(&f, body).unwrap();
        let out = validate(&bin, &f);
        let all = text(&out);
        assert!(!out.status.success(), "{name} passed: {all}");
        assert!(all.contains("did not validate"), "{name}: {all}");
    }
}

#[test]
fn crd_and_kustomize_files_parse_with_their_kind() {
    let Some(bin) = validator() else { return };
    // The validator has no schema for these: it warns and passes. Parse
    // them as YAML (PyYAML, the validator's own dependency, from its venv)
    // and check what they are.
    // The venv's python (scripts/test.sh); else the one on the PATH.
    let venv_python = bin.parent().unwrap().join("python3");
    let python = if venv_python.is_file() {
        venv_python
    } else {
        PathBuf::from("python3")
    };
    for (name, api, kind) in NO_SCHEMA {
        let out = validate(&bin, &dir().join(name));
        assert!(
            text(&out).contains("Couldn't find schema"),
            "{name}: the validator has a schema now, move it to MANIFESTS: {}",
            text(&out)
        );
        let out = Command::new(&python)
            .args([
                "-c",
                "import sys, yaml\n\
                 docs = list(yaml.safe_load_all(open(sys.argv[1])))\n\
                 assert len(docs) == 1, docs\n\
                 print(docs[0]['apiVersion'], docs[0]['kind'], docs[0].get('metadata', {}).get('namespace', '-'))",
            ])
            .arg(dir().join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out));
        let got = String::from_utf8_lossy(&out.stdout);
        let want_ns = if *kind == "Kustomization" {
            "-"
        } else {
            "turnpike"
        };
        assert_eq!(got.trim(), format!("{api} {kind} {want_ns}"), "{name}");
    }
}

#[test]
fn kustomization_lists_every_core_manifest() {
    let k = read("kustomization.yaml");
    let listed: Vec<&str> = k
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|l| l.ends_with(".yaml"))
        .collect();
    // Optional and CRD files are applied on purpose only.
    let want: Vec<&str> = MANIFESTS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !n.starts_with("optional/"))
        .collect();
    assert_eq!(listed, want);
}

// --- the daemonset's contract -------------------------------------------

#[test]
fn daemonset_has_the_settings_the_guide_relies_on() {
    let ds = read("daemonset.yaml");
    let has = |s: &str| {
        assert!(
            ds.lines().any(|l| l.trim() == s),
            "daemonset.yaml: no line {s:?}"
        )
    };
    has("hostNetwork: true");
    has("dnsPolicy: ClusterFirstWithHostNet");
    has("runAsNonRoot: true");
    has("readOnlyRootFilesystem: true");
    has("drop: [\"ALL\"]");
    has("path: /readyz");
    has("path: /healthz");
    has("preStop:");
    has("maxSurge: 0");
    // No listener below 1024, so no capability is added.
    assert!(!ds.lines().any(|l| l.trim_start().starts_with("add:")));
    // The kubelet's SIGKILL comes after the drain deadline.
    let grace: u64 = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .unwrap()
        .parse()
        .unwrap();
    let w = World::new(API, ADMIN, REST);
    let drain = turnpike::config::Config::load(&w.path("template.toml"))
        .unwrap()
        .http
        .drain_deadline
        .0
        .as_secs();
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} <= drain_deadline {drain}"
    );
    // The probes' paths are the server's routes.
    let routes = include_str!("../src/http/mod.rs");
    assert!(routes.contains(".route(\"/readyz\"") && routes.contains(".route(\"/healthz\""));
}

// --- the ConfigMap's TOML and render.sh -----------------------------------

/// A `key: |` block scalar of a ConfigMap's data, de-indented.
fn block(yaml: &str, key: &str) -> String {
    let head = format!("  {key}: |");
    let mut lines = yaml.lines().skip_while(|l| *l != head);
    assert!(lines.next().is_some(), "no {head:?}");
    let mut out = String::new();
    for l in lines {
        if l.trim().is_empty() {
            out.push('\n');
        } else if let Some(rest) = l.strip_prefix("    ") {
            out.push_str(rest);
            out.push('\n');
        } else {
            break;
        }
    }
    assert!(out.len() > 100, "{key}: {out:?}");
    out
}

/// A temporary world for render.sh: the template (secret path pointed into
/// it), the Secret's files, the node directory.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new(api: &str, admin: &str, rest: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("secrets")).unwrap();
        std::fs::create_dir(p.join("node")).unwrap();
        let toml = block(&read("configmap.yaml"), "turnpike.toml");
        let secrets = format!("{}/", p.join("secrets").display());
        std::fs::write(
            p.join("template.toml"),
            toml.replace("/etc/turnpike/secrets/", &secrets),
        )
        .unwrap();
        std::fs::write(
            p.join("render.sh"),
            block(&read("configmap.yaml"), "render.sh"),
        )
        .unwrap();
        std::fs::write(p.join("secrets/rest-secret"), rest).unwrap();
        std::fs::write(p.join("secrets/api-key"), api).unwrap();
        std::fs::write(p.join("secrets/admin-key"), admin).unwrap();
        World { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// render.sh as the init container runs it: busybox's `sh`, `sed`,
    /// `head`, `grep` and `mv` alone on the PATH (the busybox image), when
    /// busybox is installed (scripts/test.sh installs it); else the
    /// system's `sh`, or a failure when the run is required.
    fn render(&self, host_ip: &str) -> Output {
        let bin = self.path("bin");
        if !bin.exists() {
            std::fs::create_dir(&bin).unwrap();
            match busybox() {
                Some(bb) => {
                    for applet in ["sh", "sed", "head", "grep", "mv"] {
                        std::os::unix::fs::symlink(&bb, bin.join(applet)).unwrap();
                    }
                }
                None => {
                    for tool in ["sh", "sed", "head", "grep", "mv"] {
                        let p = ["/bin", "/usr/bin"]
                            .iter()
                            .map(|d| Path::new(d).join(tool))
                            .find(|p| p.exists())
                            .unwrap();
                        std::os::unix::fs::symlink(p, bin.join(tool)).unwrap();
                    }
                }
            }
        }
        Command::new(bin.join("sh"))
            .arg(self.path("render.sh"))
            .env_clear()
            .env("PATH", &bin)
            .env("TURNPIKE_TEMPLATE", self.path("template.toml"))
            .env("TURNPIKE_SECRETS", self.path("secrets"))
            .env("TURNPIKE_NODE_DIR", self.path("node"))
            .env("TURNPIKE_RENDERED", self.path("turnpike.toml"))
            .env("HOST_IP", host_ip)
            .output()
            .unwrap()
    }
}

/// busybox, or `None` after a note (a panic when required).
fn busybox() -> Option<PathBuf> {
    let found = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            !required(),
            "busybox is required (root or TURNPIKE_NETNS_REQUIRED=1) to run render.sh \
             as the busybox init container does; scripts/test.sh installs it"
        );
        eprintln!("NOTE: no busybox: render.sh runs under the system's sh and sed");
    }
    found
}

fn config_check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .args(["config", "check"])
        .arg(file)
        .output()
        .unwrap()
}

const API: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";
const ADMIN: &str = "fedcba9876543210fedcba9876543210fedcba9876543210";
const REST: &str = "5f1c2a7e9b3d4c6a8e0f1b2d3c4e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f\n";

#[test]
fn configmap_toml_passes_config_check() {
    let w = World::new(API, ADMIN, REST);
    let out = config_check(&w.path("template.toml"));
    assert!(out.status.success(), "{}", text(&out));
    // Only the per-node and secret keys are left to render.sh.
    let toml = std::fs::read_to_string(w.path("template.toml")).unwrap();
    for key in ["api_keys", "admin_keys", "public_ip", "secrets ="] {
        assert!(
            !toml.lines().any(|l| l.starts_with(key)),
            "{key} in the ConfigMap"
        );
    }
    // The fleet on Redis (issue 14) is optional: [cluster] ships commented,
    // and uncommented as the guide says it passes the same check.
    assert!(!toml.lines().any(|l| l.trim() == "[cluster]"));
    let uncommented: String = toml
        .lines()
        .map(|l| match l.trim_start().strip_prefix("# ") {
            Some(rest) if rest == "[cluster]" || rest.starts_with("redis_url = ") => {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(uncommented.lines().any(|l| l == "[cluster]"));
    assert!(
        uncommented
            .lines()
            .any(|l| l.starts_with("redis_url = \"redis://turnpike-redis."))
    );
    let with_cluster = w.path("with-cluster.toml");
    std::fs::write(&with_cluster, uncommented).unwrap();
    let out = config_check(&with_cluster);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn rendered_config_has_node_ip_keys_and_public_ip_and_passes_config_check() {
    let w = World::new(API, &format!("{ADMIN}\n"), REST);
    std::fs::write(w.path("node/public-ip"), "203.0.113.7\n").unwrap();
    let out = w.render("10.1.2.3");
    assert!(out.status.success(), "{}", text(&out));
    let rendered = w.path("turnpike.toml");
    let check = config_check(&rendered);
    assert!(check.status.success(), "{}", text(&check));
    // `config check` prints the effective config: the rendered values are
    // in it, in their tables.
    let eff: toml::Table = String::from_utf8_lossy(&check.stdout).parse().unwrap();
    let http = eff["http"].as_table().unwrap();
    assert_eq!(http["addr"].as_str(), Some("10.1.2.3:9641"));
    assert_eq!(http["api_keys"].as_array().unwrap()[0].as_str(), Some(API));
    assert_eq!(
        http["admin_keys"].as_array().unwrap()[0].as_str(),
        Some(ADMIN)
    );
    assert_eq!(eff["relay"]["public_ip"].as_str(), Some("203.0.113.7"));
    // Readable by the server's user only: it holds the keys.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&rendered).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // IPv6 node address; no public-ip file: none set.
    std::fs::remove_file(w.path("node/public-ip")).unwrap();
    let out = w.render("fd00::5");
    assert!(out.status.success(), "{}", text(&out));
    let check = config_check(&rendered);
    assert!(check.status.success(), "{}", text(&check));
    let eff: toml::Table = String::from_utf8_lossy(&check.stdout).parse().unwrap();
    assert_eq!(eff["http"]["addr"].as_str(), Some("[fd00::5]:9641"));
    assert!(eff["relay"].get("public_ip").is_none(), "{eff:?}");
}

#[test]
fn the_shipped_secret_template_is_refused() {
    // secret.yaml's stringData, as applied without filling it in.
    let s = read("secret.yaml");
    let value = |k: &str| {
        s.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{k}: ")))
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    // The render step refuses the keys...
    let w = World::new(
        &value("api-key"),
        &value("admin-key"),
        &value("rest-secret"),
    );
    let out = w.render("10.1.2.3");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("api-key"),
        "{}",
        text(&out)
    );
    assert!(!w.path("turnpike.toml").exists());
    // ... and turnpike refuses the REST secret.
    let out = config_check(&w.path("template.toml"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("auth.secret_files[0]"),
        "{}",
        text(&out)
    );
    // A key that is both API and admin key is refused by turnpike after
    // rendering (render.sh does not judge keys, `config check` does).
    let w = World::new(API, API, REST);
    assert!(w.render("10.1.2.3").status.success());
    let out = config_check(&w.path("turnpike.toml"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http.admin_keys[0]"),
        "{}",
        text(&out)
    );
    // No node address: refused.
    let w = World::new(API, ADMIN, REST);
    assert!(!w.render("").status.success());
}

#[test]
fn mounts_args_and_render_defaults_agree() {
    let ds = read("daemonset.yaml");
    let render = block(&read("configmap.yaml"), "render.sh");
    let toml = block(&read("configmap.yaml"), "turnpike.toml");
    let mount = |name: &str| -> Vec<String> {
        // Every mountPath of a volumeMount with this name.
        let lines: Vec<&str> = ds.lines().collect();
        lines
            .windows(2)
            .filter(|w| {
                w[0].trim() == format!("- name: {name}") && w[1].trim().starts_with("mountPath: ")
            })
            .map(|w| w[1].trim().trim_start_matches("mountPath: ").to_string())
            .collect()
    };
    // render.sh's defaults are where the DaemonSet mounts things.
    for (var, volume, file) in [
        ("TURNPIKE_TEMPLATE", "config", "/turnpike.toml"),
        ("TURNPIKE_SECRETS", "secrets", ""),
        ("TURNPIKE_NODE_DIR", "node", ""),
        ("TURNPIKE_RENDERED", "run", "/turnpike.toml"),
    ] {
        let default = render
            .lines()
            .find_map(|l| {
                l.split_once(&format!("${{{var}:-"))
                    .map(|(_, r)| r.split('}').next().unwrap().to_string())
            })
            .unwrap();
        let mounts = mount(volume);
        assert!(!mounts.is_empty(), "no mount of {volume}");
        assert!(
            mounts.iter().all(|m| format!("{m}{file}") == default),
            "{var}: {default} vs {mounts:?}"
        );
    }
    // serve reads the rendered file; turnpike reads
    // the REST secret from the mounted Secret.
    assert!(ds.contains(r#"args: ["serve", "--config", "/run/turnpike/turnpike.toml"]"#));
    assert!(toml.contains(r#"secret_files = ["/etc/turnpike/secrets/rest-secret"]"#));
    assert!(
        mount("secrets")
            .iter()
            .all(|m| m == "/etc/turnpike/secrets")
    );
    assert_eq!(
        mount("run").len(),
        2,
        "render and turnpike mount /run/turnpike"
    );
    assert_eq!(mount("secrets").len(), 2);
    // No init container prints the effective config (keys included) to
    // the pod's log.
    assert!(!ds.contains(r#""config", "check""#));
    // The node's IP comes from the downward API.
    assert!(ds.contains("- name: HOST_IP\n              valueFrom:\n                fieldRef:\n                  fieldPath: status.hostIP"));
}

#[test]
fn the_http_port_is_one_number_everywhere() {
    let toml = block(&read("configmap.yaml"), "turnpike.toml");
    assert!(toml.contains("\naddr = \"0.0.0.0:9641\"\n"));
    assert!(block(&read("configmap.yaml"), "render.sh").contains("$host_ip:9641"));
    let ds = read("daemonset.yaml");
    assert!(ds.contains("prometheus.io/port: \"9641\""));
    assert!(ds.contains("- name: http\n              containerPort: 9641\n"));
    let svc = read("service.yaml");
    assert!(svc.contains("port: 9641\n      targetPort: http\n"));
    assert!(read("servicemonitor.yaml").contains("- port: http\n"));
}

#[test]
fn the_guide_covers_what_the_issue_asks_and_matches_the_manifests() {
    let guide = read("README.md");
    for s in [
        "_turn._udp",
        "_turn._tcp",
        "_turns._tcp",
        "public_ip",
        "/etc/turnpike-node/public-ip",
        "Scaling up",
        "Scaling down without dropping calls",
        "create secret generic turnpike-secrets",
        "PodDisruptionBudget",
        "hostNetwork",
    ] {
        assert!(
            guide.contains(s),
            "deploy/kubernetes/README.md does not mention {s:?}"
        );
    }
    // The numbers it quotes are the manifests'.
    let ds = read("daemonset.yaml");
    let grace = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .unwrap();
    assert!(guide.contains(&format!("terminationGracePeriodSeconds: {grace}")));
    assert!(guide.contains(&format!("kubernetes-validate` {}", pinned_version())));
    let top = include_str!("../README.md");
    assert!(top.contains("## Scaling") && top.contains("deploy/kubernetes/README.md"));
}

/// The kubernetes-validate version scripts/test.sh pins.
fn pinned_version() -> String {
    include_str!("../scripts/test.sh")
        .lines()
        .find_map(|l| l.strip_prefix("k8s_validate_version="))
        .unwrap()
        .to_string()
}
