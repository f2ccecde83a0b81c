//! The command line (contract §1, §2): `check` prints every config error as
//! `FILE:LINE:COL: message` and exits 1; `hash-key` prints the `sha256:` form; `serve`
//! refuses a bad config.

use crate::bounded;
use crate::support::gateway::{TempDir, run_cli};

const GOOD: &str = "server:
  listen: [\"127.0.0.1:18080\"]
  timeouts: { connect: 2s, first_byte: 5s, idle: 5s, total: 30s }

providers:
  mock:
    type: openai
    endpoints: [\"http://127.0.0.1:9/v1\"]

models:
  chat:
    aliases: [gpt-3.5-turbo]
    targets:
      - { provider: mock, model: upstream-id }
    retry_on: [connect, timeout, 429, 500, 502, 503, 504]
";

/// The `FILE:LINE:COL: message` lines of `stderr` for `path`, as (line, col, message).
fn located_errors(stderr: &str, path: &str) -> Vec<(u32, u32, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(path)?.strip_prefix(':')?;
            let mut parts = rest.splitn(3, ':');
            let line = parts.next()?.parse().ok()?;
            let col = parts.next()?.parse().ok()?;
            let msg = parts.next()?.trim().to_string();
            Some((line, col, msg))
        })
        .collect()
}

/// Runs `check` on `yaml` and returns its `FILE:LINE:COL` errors, asserting exit 1.
async fn check_fails(yaml: &str) -> Vec<(u32, u32, String)> {
    let dir = TempDir::new();
    let path = dir.write("bad.yaml", yaml);
    let p = path.to_str().unwrap();
    let (code, _out, err) = run_cli(&["check", "-c", p], None).await;
    assert_eq!(code, 1, "check should fail; stderr:\n{err}");
    let errors = located_errors(&err, p);
    assert!(!errors.is_empty(), "no FILE:LINE:COL line in:\n{err}");
    for (line, col, msg) in &errors {
        assert!(*line >= 1 && *col >= 1, "1-based positions");
        assert!(!msg.is_empty(), "a message after the position");
    }
    errors
}

#[tokio::test]
async fn check_accepts_a_good_config() {
    bounded(60, async {
        let dir = TempDir::new();
        let path = dir.write("good.yaml", GOOD);
        let (code, _out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], None).await;
        assert_eq!(code, 0, "stderr:\n{err}");
    })
    .await;
}

#[tokio::test]
async fn check_points_at_an_unknown_key() {
    bounded(60, async {
        let yaml = GOOD.replace("  timeouts:", "  bogus_key: 1\n  timeouts:");
        let errors = check_fails(&yaml).await;
        assert!(
            errors.iter().any(|(l, c, _)| *l == 3 && *c == 3),
            "bogus_key is at 3:3; got {errors:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn check_reports_every_error() {
    bounded(60, async {
        let yaml = GOOD.replace("connect: 2s", "connect: 5 parsecs").replace(
            "{ provider: mock, model: upstream-id }",
            "{ provider: nope, model: upstream-id }",
        );
        let errors = check_fails(&yaml).await;
        let lines: Vec<u32> = errors.iter().map(|e| e.0).collect();
        assert!(
            lines.contains(&3),
            "the bad duration is on line 3; {errors:?}"
        );
        assert!(
            lines.contains(&14),
            "the unknown provider is on line 14; {errors:?}"
        );
    })
    .await;
}

/// Contract §1: every error, unknown keys included (a typo in one section must not hide
/// the errors of the others).
#[tokio::test]
async fn check_reports_every_unknown_key() {
    bounded(60, async {
        let yaml = GOOD
            .replace("  timeouts:", "  bogus_key: 1\n  timeouts:")
            .replace(
                "    type: openai\n",
                "    type: openai\n    nonsense: true\n",
            );
        let errors = check_fails(&yaml).await;
        let lines: Vec<u32> = errors.iter().map(|e| e.0).collect();
        assert!(lines.contains(&3), "{errors:?}");
        assert!(lines.contains(&9), "nonsense is on line 9; {errors:?}");
    })
    .await;
}

#[tokio::test]
async fn check_points_at_a_bad_duration() {
    bounded(60, async {
        let yaml = GOOD.replace("connect: 2s", "connect: 5 parsecs");
        let errors = check_fails(&yaml).await;
        assert!(
            errors.iter().any(|(l, _, _)| *l == 3),
            "the bad duration is on line 3; got {errors:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn check_points_at_an_unknown_provider() {
    bounded(60, async {
        let yaml = GOOD.replace(
            "{ provider: mock, model: upstream-id }",
            "{ provider: nope, model: upstream-id }",
        );
        let errors = check_fails(&yaml).await;
        assert!(
            errors.iter().any(|(l, _, _)| *l == 14),
            "the target is on line 14; got {errors:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn check_points_at_a_yaml_syntax_error() {
    bounded(60, async {
        let yaml = GOOD.replace(
            "    aliases: [gpt-3.5-turbo]",
            "    aliases: [gpt-3.5-turbo",
        );
        let errors = check_fails(&yaml).await;
        assert!(
            errors.iter().all(|(l, _, _)| *l >= 12),
            "the error is at or after line 12; got {errors:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn check_fails_on_a_missing_file() {
    bounded(60, async {
        let dir = TempDir::new();
        let p = dir.path().join("absent.yaml");
        let (code, _, err) = run_cli(&["check", "-c", p.to_str().unwrap()], None).await;
        assert_eq!(code, 1, "{err}");
        assert!(!err.trim().is_empty());
    })
    .await;
}

#[tokio::test]
async fn serve_refuses_a_bad_config() {
    bounded(60, async {
        let dir = TempDir::new();
        let yaml = GOOD.replace("  timeouts:", "  bogus_key: 1\n  timeouts:");
        let path = dir.write("bad.yaml", &yaml);
        let p = path.to_str().unwrap();
        let (code, _, err) = run_cli(&["serve", "-c", p], None).await;
        assert_ne!(code, 0);
        assert!(
            !located_errors(&err, p).is_empty(),
            "serve prints the same FILE:LINE:COL errors:\n{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn hash_key_prints_the_sha256_form() {
    bounded(60, async {
        let (code, out, err) = run_cli(&["hash-key"], Some("secret\n")).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            out.trim_end(),
            "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
        assert!(!err.contains("secret"), "the key is not echoed");
        let (code, out2, _) = run_cli(&["hash-key"], Some("secret")).await;
        assert_eq!(code, 0);
        assert_eq!(out2, out, "a trailing newline is not part of the key");
        let (code, _, _) = run_cli(&["hash-key"], Some("")).await;
        assert_ne!(code, 0, "an empty key is refused");
    })
    .await;
}

#[tokio::test]
async fn hash_password_prints_an_argon2id_string_that_verifies() {
    bounded(60, async {
        let (code, out, err) = run_cli(&["hash-password"], Some("hunter2-canary\n")).await;
        assert_eq!(code, 0, "{err}");
        let phc = out.trim_end();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!out.contains("hunter2") && !err.contains("hunter2"));
        let hash = argon2::PasswordHash::new(phc).unwrap();
        use argon2::PasswordVerifier;
        assert!(
            argon2::Argon2::default()
                .verify_password(b"hunter2-canary", &hash)
                .is_ok()
        );
        let (_, again, _) = run_cli(&["hash-password"], Some("hunter2-canary")).await;
        assert_ne!(again, out, "a fresh salt each time");
    })
    .await;
}

#[tokio::test]
async fn version_and_help() {
    bounded(60, async {
        let (code, out, _) = run_cli(&["--version"], None).await;
        assert_eq!(code, 0);
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
        let (code, out, _) = run_cli(&["--help"], None).await;
        assert_eq!(code, 0);
        for cmd in ["serve", "check", "hash-key", "hash-password"] {
            assert!(out.contains(cmd), "--help lists {cmd}: {out}");
        }
    })
    .await;
}
