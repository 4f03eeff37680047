//! Removal of the temporary images a build creates in the engine, also when the build is
//! cancelled: a timeout or a signal drops the patch future, so no `.await` after the
//! cancellation point ever runs, and only `Drop` does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::RemoveImageOptionsBuilder;

use super::{Endpoint, connect};

/// Time the removal on drop may take, connection included, before the images are left.
const DROP_CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds started by this process, so that concurrent builds of an index's platforms
/// never share a tag.
static BUILD_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The tags of one build's temporary images. They are removed by [`TempImages::remove`]
/// when the build ends, or by `Drop` when the build is cancelled before that.
pub(super) struct TempImages {
    endpoint: Endpoint,
    pub base_tag: String,
    pub built_tag: String,
    removed: bool,
}

impl TempImages {
    /// Picks tags unique to this process and build: `layermend-buildkit-base:PID-N` and
    /// `layermend-buildkit-patched:PID-N`.
    pub fn new(endpoint: &Endpoint) -> TempImages {
        let build = BUILD_COUNTER.fetch_add(1, Ordering::Relaxed);
        let unique = format!("{}-{build}", std::process::id());
        TempImages {
            endpoint: endpoint.clone(),
            base_tag: format!("layermend-buildkit-base:{unique}"),
            built_tag: format!("layermend-buildkit-patched:{unique}"),
            removed: false,
        }
    }

    /// Removes the images through `docker`. A failure is logged, not returned, because
    /// the build's own result matters more than a leftover image.
    pub async fn remove(&mut self, docker: &Docker) {
        remove_tags(docker, &self.endpoint, &self.tags()).await;
        self.removed = true;
    }

    fn tags(&self) -> [String; 2] {
        [self.built_tag.clone(), self.base_tag.clone()]
    }
}

impl Drop for TempImages {
    /// Removes the images of a cancelled build. The caller's runtime may be shutting down,
    /// and a runtime cannot block on itself. So the removal runs on a new thread with its
    /// own runtime and connection, and `drop` waits for it at most
    /// [`DROP_CLEANUP_TIMEOUT`].
    ///
    /// NOTE: the engine cancels a build when its connection closes, but an image that
    /// the engine finishes writing after the removal (a load or a build completing in
    /// that instant) stays behind.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let endpoint = self.endpoint.clone();
        let tags = self.tags();
        tracing::debug!(%endpoint, ?tags, "removing the images of a cancelled build");
        let thread = std::thread::Builder::new()
            .name("buildkit-cleanup".to_owned())
            .spawn(move || remove_on_new_runtime(&endpoint, &tags));
        match thread {
            Ok(thread) => {
                let _ = thread.join();
            }
            Err(error) => tracing::debug!(%error, "no thread to remove temporary images"),
        }
    }
}

/// Removes `tags` through a new connection on a new runtime, within
/// [`DROP_CLEANUP_TIMEOUT`].
fn remove_on_new_runtime(endpoint: &Endpoint, tags: &[String]) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::debug!(%error, "no runtime to remove temporary images");
            return;
        }
    };
    let removal = async {
        match connect(endpoint).await {
            Ok(docker) => remove_tags(&docker, endpoint, tags).await,
            Err(error) => tracing::warn!(%endpoint, %error, "temporary images not removed"),
        }
    };
    // The timer needs the runtime's context, so it is created inside `block_on`.
    let finished =
        runtime.block_on(async { tokio::time::timeout(DROP_CLEANUP_TIMEOUT, removal).await });
    if finished.is_err() {
        tracing::warn!(%endpoint, ?tags, "removing temporary images timed out");
    }
}

async fn remove_tags(docker: &Docker, endpoint: &Endpoint, tags: &[String]) {
    for tag in tags {
        let options = RemoveImageOptionsBuilder::new().force(true).build();
        match docker.remove_image(tag, Some(options), None).await {
            Ok(_) => tracing::debug!(%endpoint, tag, "temporary image removed"),
            // The built image does not exist when the build failed or was cancelled.
            Err(error) => tracing::debug!(%endpoint, tag, %error, "temporary image not removed"),
        }
    }
}
