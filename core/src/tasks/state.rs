//! The states a task goes through: a leaf of its own, so what only needs
//! the word (error details, answers) does not depend on the task actions.

crate::words::word_enum!(
    "task state",
    /// States a task goes through: `scheduled` while a delayed task waits
    /// for its `run_at`, then `queued` → `running` → `succeeded` |
    /// `failed`, back to `queued` while it waits for a retry, `dead` when it
    /// gives up, `cancelled` when a client cancelled it first.
    pub enum TaskState {
        Scheduled = "scheduled",
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Dead = "dead",
        Cancelled = "cancelled",
    }
);

impl TaskState {
    /// True for the states a task never leaves.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Dead | Self::Cancelled
        )
    }
}
