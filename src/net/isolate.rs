//! Panic isolation: a panic in one connection's task is logged and ends
//! that connection only (its guards still drop on unwind).

/// Runs one connection's task so that a panic in it ends only that task.
///
/// A plain function, not an `async fn`: an `async fn` would keep its
/// moved-from argument beside the future it moved into, doubling the
/// memory of every connection task.
pub fn run_isolated(
    task: impl std::future::Future<Output = ()>,
) -> impl std::future::Future<Output = ()> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(task)
        .catch_unwind()
        .map(|outcome| {
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|text| text.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %message, "a connection task panicked; only that connection was closed");
            }
        })
}
