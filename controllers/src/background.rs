//! Tasks that live as long as their owner: the controllers' periodic reporters and exporters.

/// A spawned task that is aborted when this is dropped, so a controller that stops takes its
/// side tasks with it.
#[derive(Debug)]
pub struct Background(tokio::task::JoinHandle<()>);

impl Background {
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}
