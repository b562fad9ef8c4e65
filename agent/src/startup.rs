//! What `weir run` checks and adjusts before building the pipeline: the open-files limit
//! (every connection is a file descriptor) and a writable `agent.data_dir`.

use std::path::Path;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tracing::{info, warn};

use crate::components::{ChannelConfig, SourceConfig};
use crate::config::Config;

/// Raises RLIMIT_NOFILE's soft limit to the hard limit, so that the listeners'
/// `max_connections` are not cut short by the default soft limit (often 1024), and logs both.
pub fn raise_open_files_limit() {
    let before = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    if before.current == before.maximum {
        info!(
            message = "open files limit",
            soft = %show(before.current),
            hard = %show(before.maximum),
        );
        return;
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => info!(
            message = "open files limit raised to the hard limit",
            soft_before = %show(before.current),
            soft = %show(before.maximum),
            hard = %show(before.maximum),
        ),
        Err(e) => warn!(
            message = "cannot raise the open files limit; connections beyond it will be refused",
            soft = %show(before.current),
            hard = %show(before.maximum),
            error = %e,
        ),
    }
}

/// True when some component keeps state under `agent.data_dir`: a file channel, a taildir
/// source (positions) or a job (checkpoints).
pub fn uses_data_dir(config: &Config) -> bool {
    config
        .channels
        .values()
        .any(|c| matches!(c, ChannelConfig::File(_)))
        || config
            .sources
            .values()
            .any(|s| matches!(s.config, SourceConfig::Taildir(_)))
        || !config.jobs.is_empty()
}

/// Creates `data_dir` if needed and proves it writable with a probe file, so an unusable
/// directory is one clear error naming the path, before anything starts.
pub fn check_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        anyhow::anyhow!(
            "agent.data_dir: {} {what}: {e} (it must be a directory this user can write)",
            data_dir.display()
        )
    };
    std::fs::create_dir_all(data_dir).map_err(|e| fail("cannot be created", e))?;
    let probe = data_dir.join(format!(".weir-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| fail("is not writable", e))?;
    std::fs::remove_file(&probe).map_err(|e| fail("is not writable", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_under_a_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let dir = file.join("data");
        let err = check_data_dir(&dir).unwrap_err().to_string();
        assert!(err.starts_with("agent.data_dir: "), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
    }

    #[test]
    fn a_writable_data_dir_is_created_and_left_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        check_data_dir(&dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }
}
