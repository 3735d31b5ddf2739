//! Restart: the fleet of an earlier storm registers again, unchanged, as when every
//! instance restarts after a redeploy of nothing. The same options and seed give the
//! same instances, so the server should find every one of them already stored.

use crate::report::{EXECUTE_SUCCESS, EXISTED_RESOURCE, Expectation, Operation};
use crate::scenario::storm::{self, StormArgs};
use crate::scenario::{REGISTER, ScenarioRun, SetupError};

/// An unchanged instance is `ExistedResource`; a server configured to answer
/// success for unchanged instances answers `ExecuteSuccess` instead.
pub const EXPECTATION: Expectation = Expectation {
    codes: &[EXISTED_RESOURCE, EXECUTE_SUCCESS],
};

const OPERATIONS: &[Operation] = &[Operation {
    name: REGISTER,
    expectation: EXPECTATION,
}];

/// Registers the storm's fleet (same options, same seed) again and reports.
pub async fn run(args: StormArgs) -> Result<ScenarioRun, SetupError> {
    storm::register_fleet("restart", OPERATIONS, args).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;

    #[test]
    fn restart_accepts_existed_resource_and_success_only() {
        assert!(EXPECTATION.accepts(Outcome::Answered(Some(EXISTED_RESOURCE))));
        assert!(EXPECTATION.accepts(Outcome::Answered(Some(EXECUTE_SUCCESS))));
        assert!(!EXPECTATION.accepts(Outcome::Answered(Some(400303))));
        assert!(!EXPECTATION.accepts(Outcome::Answered(None)));
        assert!(!EXPECTATION.accepts(Outcome::Timeout));
    }
}
