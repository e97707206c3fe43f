//! A run's task graph: from the states of its task instances, which tasks are ready to run,
//! which can no longer run (`upstream_failed`, `skipped`, per their trigger rule), and, once
//! every task has ended, the run's state. Airflow's trigger-rule dependency and its DAG-run
//! state rule (a run fails when a leaf failed). Pure, so the scheduler's pass and the
//! executor's after-task step decide alike.

use std::collections::{HashMap, HashSet};

use super::{TaskInstanceState as S, TaskSpec, TriggerRule};
use crate::dag_run::DagRunState;

/// What to change in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advance {
    /// Task ids (with no state yet) whose upstreams allow them to run now.
    pub scheduled: Vec<String>,
    pub upstream_failed: Vec<String>,
    pub skipped: Vec<String>,
    /// The run's final state, once every task instance has ended.
    pub run_state: Option<DagRunState>,
}

impl Advance {
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
            && self.upstream_failed.is_empty()
            && self.skipped.is_empty()
            && self.run_state.is_none()
    }
}

/// What a trigger rule says about a task, given its upstreams' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Wait,
    Run,
    UpstreamFailed,
    Skip,
}

fn readiness(rule: TriggerRule, upstream: &[Option<S>]) -> Readiness {
    let total = upstream.len();
    let count = |f: fn(S) -> bool| upstream.iter().filter(|s| s.is_some_and(f)).count();
    let success = count(|s| s == S::Success);
    let skipped = count(|s| s == S::Skipped);
    let failed = count(S::is_failure);
    let done = count(S::is_finished);
    let all_done = done == total;
    match rule {
        TriggerRule::AllSuccess if failed > 0 => Readiness::UpstreamFailed,
        TriggerRule::AllSuccess if skipped > 0 => Readiness::Skip,
        TriggerRule::AllSuccess if success == total => Readiness::Run,
        TriggerRule::AllDone if all_done => Readiness::Run,
        TriggerRule::OneSuccess if success > 0 => Readiness::Run,
        TriggerRule::OneSuccess if all_done && skipped == total => Readiness::Skip,
        TriggerRule::OneSuccess if all_done => Readiness::UpstreamFailed,
        TriggerRule::OneFailed if failed > 0 => Readiness::Run,
        TriggerRule::OneFailed if all_done => Readiness::Skip,
        TriggerRule::NoneFailed if failed > 0 => Readiness::UpstreamFailed,
        TriggerRule::NoneFailed if all_done => Readiness::Run,
        _ => Readiness::Wait,
    }
}

/// Decides what changes in a run whose task instances are in `states` (by task id; `None`:
/// no state yet), for the DAG's `tasks`. Tasks without a task instance in this run (added to
/// the DAG after the run began) and task instances of tasks no longer defined take no part.
/// A run without task instances has no final state here: it ends by `runs set-state`.
pub fn advance(tasks: &[TaskSpec], states: &HashMap<String, Option<S>>) -> Advance {
    let mut out = Advance::default();
    let present: Vec<&TaskSpec> = tasks
        .iter()
        .filter(|t| states.contains_key(&t.task_id))
        .collect();
    if present.is_empty() {
        return out;
    }
    let mut effective: HashMap<&str, Option<S>> = present
        .iter()
        .map(|t| (t.task_id.as_str(), states[&t.task_id]))
        .collect();
    // Upstream before downstream, so a decision reaches everything below it in one call.
    for task in topological(&present) {
        if effective[task.task_id.as_str()].is_some() {
            continue;
        }
        let upstream: Vec<Option<S>> = task
            .depends_on
            .iter()
            .filter_map(|u| effective.get(u.as_str()).copied())
            .collect();
        let decided = match readiness(task.trigger_rule, &upstream) {
            Readiness::Wait => continue,
            Readiness::Run => {
                out.scheduled.push(task.task_id.clone());
                S::Scheduled
            }
            Readiness::UpstreamFailed => {
                out.upstream_failed.push(task.task_id.clone());
                S::UpstreamFailed
            }
            Readiness::Skip => {
                out.skipped.push(task.task_id.clone());
                S::Skipped
            }
        };
        effective.insert(task.task_id.as_str(), Some(decided));
    }
    if effective.values().all(|s| s.is_some_and(S::is_finished)) {
        let upstreams: HashSet<&str> = present
            .iter()
            .flat_map(|t| t.depends_on.iter().map(String::as_str))
            .collect();
        let leaf_failed = present
            .iter()
            .filter(|t| !upstreams.contains(t.task_id.as_str()))
            .any(|t| effective[t.task_id.as_str()].is_some_and(S::is_failure));
        out.run_state = Some(if leaf_failed {
            DagRunState::Failed
        } else {
            DagRunState::Success
        });
    }
    out
}

/// `tasks` with every task after its upstreams (Kahn's order; ties in definition order). A
/// cycle cannot be defined (the sync refuses it); should a stored one appear, its tasks are
/// left out rather than looped over.
fn topological<'a>(tasks: &[&'a TaskSpec]) -> Vec<&'a TaskSpec> {
    let known: HashSet<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
    let mut waiting: HashMap<&str, usize> = tasks
        .iter()
        .map(|t| {
            let n = t
                .depends_on
                .iter()
                .filter(|u| known.contains(u.as_str()))
                .count();
            (t.task_id.as_str(), n)
        })
        .collect();
    let mut order: Vec<&TaskSpec> = Vec::with_capacity(tasks.len());
    let mut done: HashSet<&str> = HashSet::new();
    loop {
        let before = order.len();
        for task in tasks {
            let id = task.task_id.as_str();
            if !done.contains(id) && waiting[id] == 0 {
                done.insert(id);
                order.push(task);
                for other in tasks {
                    if other.depends_on.iter().any(|u| u == id) {
                        if let Some(n) = waiting.get_mut(other.task_id.as_str()) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
            }
        }
        if order.len() == before {
            return order;
        }
    }
}

/// The tasks downstream of `roots` (not including them), for `tasks clear --downstream`.
pub fn downstream_of(tasks: &[TaskSpec], roots: &[String]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut frontier: Vec<&str> = roots.iter().map(String::as_str).collect();
    while let Some(id) = frontier.pop() {
        for task in tasks {
            if task.depends_on.iter().any(|u| u == id)
                && !found.contains(&task.task_id)
                && !roots.contains(&task.task_id)
            {
                found.push(task.task_id.clone());
                frontier.push(task.task_id.as_str());
            }
        }
    }
    found
}

/// The first cycle among `tasks`' `depends_on`, as the task ids around it (`a → b → a`).
pub fn find_cycle(tasks: &[TaskSpec]) -> Option<Vec<String>> {
    let refs: Vec<&TaskSpec> = tasks.iter().collect();
    let ordered: HashSet<&str> = topological(&refs)
        .iter()
        .map(|t| t.task_id.as_str())
        .collect();
    // Tasks left out of the order are on a cycle or below one: walk upstream from one until a
    // task repeats.
    let by_id: HashMap<&str, &TaskSpec> = tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let start = tasks
        .iter()
        .find(|t| !ordered.contains(t.task_id.as_str()))?;
    let mut path: Vec<&str> = vec![start.task_id.as_str()];
    loop {
        let current = by_id[path[path.len() - 1]];
        let next = current
            .depends_on
            .iter()
            .map(String::as_str)
            .find(|u| by_id.contains_key(u) && !ordered.contains(u))?;
        if let Some(at) = path.iter().position(|p| *p == next) {
            // The walk went upstream; print the cycle downstream-wise, as `depends_on` reads.
            let mut cycle = vec![next.to_string()];
            cycle.extend(path[at..].iter().rev().map(|s| s.to_string()));
            return Some(cycle);
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Operator;

    fn task(id: &str, ups: &[&str], rule: TriggerRule) -> TaskSpec {
        TaskSpec {
            task_id: id.into(),
            operator: Operator::Shell {
                script: "true".into(),
            },
            depends_on: ups.iter().map(|s| s.to_string()).collect(),
            trigger_rule: rule,
            retries: 0,
            retry_delay: crate::task::DEFAULT_RETRY_DELAY,
            retry_exponential_backoff: false,
            execution_timeout: None,
            timeout: None,
            resume: None,
        }
    }

    fn states(pairs: &[(&str, Option<S>)]) -> HashMap<String, Option<S>> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_chain_runs_in_order_and_ends_in_success() {
        use TriggerRule::AllSuccess as A;
        let tasks = [
            task("a", &[], A),
            task("b", &["a"], A),
            task("c", &["b"], A),
        ];
        let first = advance(&tasks, &states(&[("a", None), ("b", None), ("c", None)]));
        assert_eq!(first.scheduled, vec!["a"]);
        assert_eq!(first.run_state, None);
        let second = advance(
            &tasks,
            &states(&[("a", Some(S::Success)), ("b", None), ("c", None)]),
        );
        assert_eq!(second.scheduled, vec!["b"]);
        let done = advance(
            &tasks,
            &states(&[
                ("a", Some(S::Success)),
                ("b", Some(S::Success)),
                ("c", Some(S::Success)),
            ]),
        );
        assert_eq!(done.run_state, Some(DagRunState::Success));
    }

    #[test]
    fn a_failure_propagates_down_in_one_step_and_the_cleanup_task_runs() {
        let tasks = [
            task("a", &[], TriggerRule::AllSuccess),
            task("b", &["a"], TriggerRule::AllSuccess),
            task("c", &["b"], TriggerRule::AllSuccess),
            task("on_fail", &["a"], TriggerRule::OneFailed),
            task("always", &["c"], TriggerRule::AllDone),
        ];
        let out = advance(
            &tasks,
            &states(&[
                ("a", Some(S::Failed)),
                ("b", None),
                ("c", None),
                ("on_fail", None),
                ("always", None),
            ]),
        );
        assert_eq!(out.upstream_failed, vec!["b", "c"]);
        assert_eq!(out.scheduled, vec!["on_fail", "always"]);
        assert_eq!(out.run_state, None);
    }

    #[test]
    fn one_failed_is_skipped_when_nothing_failed_and_the_run_succeeds() {
        let tasks = [
            task("a", &[], TriggerRule::AllSuccess),
            task("on_fail", &["a"], TriggerRule::OneFailed),
        ];
        let out = advance(
            &tasks,
            &states(&[("a", Some(S::Success)), ("on_fail", None)]),
        );
        assert_eq!(out.skipped, vec!["on_fail"]);
        assert_eq!(out.run_state, Some(DagRunState::Success));
    }

    #[test]
    fn a_failed_leaf_fails_the_run_but_a_handled_failure_does_not() {
        let tasks = [
            task("a", &[], TriggerRule::AllSuccess),
            task("b", &["a"], TriggerRule::AllSuccess),
        ];
        let out = advance(
            &tasks,
            &states(&[("a", Some(S::Failed)), ("b", Some(S::UpstreamFailed))]),
        );
        assert_eq!(out.run_state, Some(DagRunState::Failed));
        let handled = [
            task("a", &[], TriggerRule::AllSuccess),
            task("cleanup", &["a"], TriggerRule::OneFailed),
        ];
        let out = advance(
            &handled,
            &states(&[("a", Some(S::Failed)), ("cleanup", Some(S::Success))]),
        );
        assert_eq!(out.run_state, Some(DagRunState::Success));
    }

    #[test]
    fn rules_wait_for_what_they_need() {
        use Readiness::*;
        let (ok, bad, skip, none) = (Some(S::Success), Some(S::Failed), Some(S::Skipped), None);
        let running = Some(S::Running);
        assert_eq!(readiness(TriggerRule::AllSuccess, &[ok, running]), Wait);
        assert_eq!(readiness(TriggerRule::AllSuccess, &[ok, skip]), Skip);
        assert_eq!(readiness(TriggerRule::AllSuccess, &[]), Run);
        assert_eq!(readiness(TriggerRule::AllDone, &[ok, none]), Wait);
        assert_eq!(readiness(TriggerRule::AllDone, &[bad, skip]), Run);
        assert_eq!(readiness(TriggerRule::OneSuccess, &[ok, running]), Run);
        assert_eq!(
            readiness(TriggerRule::OneSuccess, &[bad, skip]),
            UpstreamFailed
        );
        assert_eq!(readiness(TriggerRule::OneSuccess, &[skip, skip]), Skip);
        assert_eq!(readiness(TriggerRule::OneFailed, &[running, bad]), Run);
        assert_eq!(readiness(TriggerRule::OneFailed, &[ok, ok]), Skip);
        assert_eq!(readiness(TriggerRule::NoneFailed, &[ok, skip]), Run);
        assert_eq!(
            readiness(TriggerRule::NoneFailed, &[Some(S::UpstreamFailed), running]),
            UpstreamFailed
        );
    }

    #[test]
    fn cycles_are_found_and_named() {
        let tasks = [
            task("a", &["c"], TriggerRule::AllSuccess),
            task("b", &["a"], TriggerRule::AllSuccess),
            task("c", &["b"], TriggerRule::AllSuccess),
            task("d", &[], TriggerRule::AllSuccess),
        ];
        let cycle = find_cycle(&tasks).unwrap();
        assert_eq!(cycle, vec!["a", "b", "c", "a"]);
        assert!(find_cycle(&tasks[3..]).is_none());
    }

    #[test]
    fn downstream_is_transitive() {
        let tasks = [
            task("a", &[], TriggerRule::AllSuccess),
            task("b", &["a"], TriggerRule::AllSuccess),
            task("c", &["b"], TriggerRule::AllSuccess),
            task("x", &[], TriggerRule::AllSuccess),
        ];
        let mut down = downstream_of(&tasks, &["a".to_string()]);
        down.sort();
        assert_eq!(down, vec!["b", "c"]);
    }
}
