//! The SDK's provider conformance suite against real directories and the real OS watcher.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use triggerer_sdk::testkit::{run_conformance, ConformanceSource, Timing};
use triggerer_sdk::{EventTrigger, Provider};

use crate::FileProvider;

/// A fresh directory per check. A file's acknowledgement is its identity in the checkpoint,
/// which the core commits with the event.
struct Files {
    provider: FileProvider,
    dir: Option<tempfile::TempDir>,
    written: usize,
}

impl Files {
    fn dir(&self) -> Result<&Path, String> {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .ok_or_else(|| "no directory yet".to_string())
    }
}

#[async_trait]
impl ConformanceSource for Files {
    fn name(&self) -> String {
        "file".into()
    }

    async fn fresh(&mut self) -> Result<(), String> {
        self.dir = Some(tempfile::tempdir().map_err(|e| e.to_string())?);
        self.written = 0;
        Ok(())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let dir = self.dir()?.to_str().ok_or("temp dir is not UTF-8")?;
        let kwargs = json!({ "filepath": dir });
        self.provider.validate(&kwargs).map_err(|e| e.to_string())?;
        self.provider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        let dir = self.dir()?.to_path_buf();
        for _ in 0..n {
            let path = dir.join(format!("f{}.txt", self.written));
            std::fs::write(&path, b"data").map_err(|e| format!("{}: {e}", path.display()))?;
            self.written += 1;
        }
        Ok(())
    }

    async fn acknowledged(
        &mut self,
        checkpoint: &HashMap<String, String>,
    ) -> Result<usize, String> {
        let dir = self.dir()?;
        Ok(checkpoint
            .keys()
            .filter(|key| PathBuf::from(key).starts_with(dir))
            .count())
    }

    fn timing(&self) -> Timing {
        Timing {
            // The checkpoint is committed with the event: nothing to wait for but a window to
            // watch for premature entries in.
            ack: Duration::from_millis(500),
            ..Timing::default()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_provider_conforms() {
    let mut files = Files {
        provider: FileProvider::new(),
        dir: None,
        written: 0,
    };
    if let Err(failures) = run_conformance(&mut files).await {
        panic!("{failures}");
    }
}
