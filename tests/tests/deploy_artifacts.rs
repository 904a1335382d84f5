//! The deployable artifacts under `deploy/` stay valid: `deploy/check_deploy.py` renders the
//! Helm chart offline (Helm SDK), lints it, validates every manifest against the Kubernetes
//! schemas, and checks the Grafana dashboard, the Collector config and the Dockerfile.

/// Scenario: the checker over the repository's `deploy/`. Guarantees: every check passes
/// (the checker prints one line per check and `N passed, 0 failed`).
use trike::config::fleet::Role;

#[test]
fn deploy_artifacts_render_and_validate() {
    let Some(python) = trike_tests::test_python() else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dump = std::env::temp_dir().join(format!("trike-chart-configs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dump);
    std::fs::create_dir_all(&dump).unwrap();
    let out = std::process::Command::new(&python)
        .arg(root.join("deploy/check_deploy.py"))
        .arg("--dump-configs")
        .arg(&dump)
        .current_dir(&root)
        .output()
        .expect("the deploy checker runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(last.ends_with(" passed, 0 failed"), "{stdout}");
    let passed: u32 = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 10, "only {passed} checks ran:\n{stdout}");

    // The configs the chart renders into its ConfigMaps are ones Trike accepts.
    // TLS files are mount paths in the pod: the check points them at real certificates.
    let pki = trike_tests::pki::Pki::write(&dump.join("pki"));
    let mut validated = 0;
    let mut with_tls = 0;
    for entry in std::fs::read_dir(&dump).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        if text.contains("/etc/trike-tls/") {
            with_tls += 1;
            text = text.replace("/etc/trike-tls/", &format!("{}/", pki.dir.display()));
        }
        // The kubelet sets POD_NAME and POD_IP (downward API) where the chart references them.
        let lookup = |name: &str| match name {
            "POD_NAME" => Some("trike-0".to_string()),
            "POD_IP" => Some("10.0.0.7".to_string()),
            _ => std::env::var(name).ok(),
        };
        // Fleet mode's config is read by gateways and processors alike.
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let fleet = name.starts_with("fleet--") || name.starts_with("fleet-tls--");
        let roles: &[_] = if fleet && name.ends_with("trike.yaml") {
            &[Role::Gateway, Role::Processor]
        } else {
            &[Role::All]
        };
        let tls = text.contains("\ntls:");
        for &role in roles {
            let raw = trike::config::RawConfig::from_yaml_with(&text, &lookup)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let o = trike::config::validate::Overrides {
                role: Some(role),
                ..Default::default()
            };
            match trike::config::Config::validate(raw, &o) {
                Ok(c) if role == Role::Processor => {
                    let src = c
                        .kafka_ingest
                        .expect("a processor reads the partials topic");
                    assert_eq!(src.group_instance_id.as_deref(), Some("trike-0"));
                    assert_eq!(src.topics, std::slice::from_ref(&c.fleet.partials_topic));
                    let scheme = if tls { "https" } else { "http" };
                    assert_eq!(
                        c.fleet.advertise_url.as_deref(),
                        Some(format!("{scheme}://10.0.0.7:8480").as_str())
                    );
                    if tls {
                        // Members check each other against the Service's name.
                        assert_eq!(c.fleet.server_name.as_deref(), Some("trike"));
                        assert!(c.fleet.ca_file.is_some());
                    }
                }
                Ok(_) => {}
                Err(problems) => panic!("{} as {role:?}: {}", path.display(), problems.join("; ")),
            }
            validated += 1;
        }
    }
    assert!(validated >= 6, "{validated} rendered configs validated");
    assert!(
        with_tls >= 1,
        "the chart's TLS option rendered a config with tls:"
    );
    let _ = std::fs::remove_dir_all(&dump);
}
