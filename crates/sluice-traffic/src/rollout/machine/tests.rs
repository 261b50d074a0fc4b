//! The state machine driven by a fake clock: whole rollouts, failures, commands, a restart.

use super::*;
use crate::rollout::plan::{self, RolloutPlan};
use crate::rollout::Status;

const H: u64 = 3_600_000;
/// A fixed start: 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;

fn plan_of(text: &str) -> RolloutPlan {
    plan::parse(&serde_yaml::from_str(text).unwrap()).unwrap()
}

fn example() -> Rollout {
    Rollout::new(plan_of(plan::EXAMPLE))
}

/// Two weight steps, one guardrail; `on_failure` as given.
fn small(on_failure: &str) -> Rollout {
    Rollout::new(plan_of(&format!(
        "kind: rollout\nbaseline: {{ model: m, version: 1 }}\ncandidate: {{ model: m, version: 2 }}\nsteps:\n  - {{ weight: 10, hold: 10s, min_requests: 100 }}\n  - {{ weight: 100 }}\nguardrails:\n  - {{ metric: error_rate, max_increase: 0.01 }}\non_failure: {on_failure}\n"
    )))
}

fn reading(name: &str, value: f64, verdict: Verdict) -> GuardrailReading {
    GuardrailReading { guardrail: name.into(), value: Some(value), threshold: 0.01, verdict }
}

/// Every planned guardrail with `verdict`.
fn all(r: &Rollout, verdict: Verdict) -> Vec<GuardrailReading> {
    r.plan().guardrails.iter().map(|g| GuardrailReading::of(g, Some(0.001), verdict)).collect()
}

/// All guardrails passing but `name`, which reads `verdict`.
fn all_but(r: &Rollout, name: &str, verdict: Verdict) -> Vec<GuardrailReading> {
    let mut v = all(r, Verdict::Pass);
    v.iter_mut().filter(|x| x.guardrail == name).for_each(|x| x.verdict = verdict);
    v
}

fn obs(requests: u64, guardrails: Vec<GuardrailReading>) -> Observation {
    Observation { candidate_requests_in_step: requests, guardrails }
}

fn weight(percent: f64) -> Traffic {
    Traffic { candidate_percent: percent, shadow_share: 0.0 }
}

#[test]
fn a_rollout_goes_from_shadow_through_the_weights_to_promotion() {
    let mut r = example();
    assert_eq!((r.phase(), r.traffic()), (Phase::Pending, Traffic::BASELINE));
    r.start(T0).unwrap();
    assert_eq!(r.traffic(), Traffic { candidate_percent: 0.0, shadow_share: 1.0 });
    let pass = all(&r, Verdict::Pass);

    // The shadow step holds for 72 h and 10 000 requests.
    assert!(r.observe(T0 + 71 * H, &obs(50_000, pass.clone())).is_none());
    assert!(r.observe(T0 + 72 * H, &obs(9_999, pass.clone())).is_none());
    let t = r.observe(T0 + 72 * H, &obs(10_000, pass.clone())).unwrap();
    assert_eq!((t.from, t.to, t.cause), (Phase::Step(0), Phase::Step(1), Cause::Advance));
    assert_eq!(r.traffic(), weight(5.0));

    // 5 %: 24 h and 5000 requests.
    let t1 = T0 + 72 * H;
    assert!(r.observe(t1 + 24 * H, &obs(4_999, pass.clone())).is_none());
    assert_eq!(r.observe(t1 + 24 * H + 1, &obs(5_000, pass.clone())).unwrap().to, Phase::Step(2));
    assert_eq!(r.traffic(), weight(25.0));

    // 25 % and 50 %: 24 h each, no request minimum.
    let t2 = t1 + 24 * H + 1;
    assert!(r.observe(t2 + 24 * H - 1, &obs(0, pass.clone())).is_none());
    assert_eq!(r.observe(t2 + 24 * H, &obs(0, pass.clone())).unwrap().to, Phase::Step(3));
    let t3 = t2 + 24 * H;
    assert_eq!(r.observe(t3 + 24 * H, &obs(0, pass.clone())).unwrap().to, Phase::Step(4));
    assert_eq!(r.traffic(), weight(100.0));

    // 100 %: no hold; with no baseline left, inconclusive comparisons do not hold it.
    let t4 = t3 + 24 * H;
    let t = r.observe(t4 + 1000, &obs(10, all(&r, Verdict::Inconclusive))).unwrap();
    assert_eq!((t.from, t.to, t.traffic), (Phase::Step(4), Phase::Promoted, Traffic::CANDIDATE));
    assert!(t.reason.ends_with("promoted: all traffic to the candidate"), "{}", t.reason);
    assert_eq!(r.traffic(), Traffic::CANDIDATE);

    let path: Vec<(Phase, Cause)> = r.history().iter().map(|t| (t.to, t.cause)).collect();
    assert_eq!(
        path,
        [
            (Phase::Step(0), Cause::Start),
            (Phase::Step(1), Cause::Advance),
            (Phase::Step(2), Cause::Advance),
            (Phase::Step(3), Cause::Advance),
            (Phase::Step(4), Cause::Advance),
            (Phase::Promoted, Cause::Advance),
        ]
    );
    // Nothing moves it any more.
    assert!(r.observe(t4 + 2000, &obs(10, all(&r, Verdict::Fail))).is_none());
    assert_eq!(r.history().len(), 6);
}

#[test]
fn inconclusive_or_missing_readings_hold_a_step_past_its_hold() {
    let mut r = example();
    r.start(T0).unwrap();
    r.observe(T0 + 72 * H, &obs(10_000, all(&r, Verdict::Pass))).unwrap();
    let t1 = T0 + 72 * H;
    for hours in [24, 30, 48, 200] {
        let waiting = all_but(&r, "srm", Verdict::Inconclusive);
        assert!(r.observe(t1 + hours * H, &obs(1_000_000, waiting)).is_none(), "{hours} h");
    }
    // A guardrail the step can measure but nobody reported is no pass either.
    let missing: Vec<_> = all(&r, Verdict::Pass).into_iter().filter(|g| g.guardrail != "error_rate").collect();
    assert!(r.observe(t1 + 201 * H, &obs(1_000_000, missing)).is_none());
    assert_eq!(r.history().len(), 2, "holding records nothing");
    // The shadow comparison's disagreement is not measured at 5 %: inconclusive does not hold it.
    let t = r.observe(t1 + 202 * H, &obs(1_000_000, all_but(&r, "disagreement(label)", Verdict::Inconclusive)));
    assert_eq!(t.unwrap().to, Phase::Step(2));
}

#[test]
fn the_shadow_step_needs_disagreement_but_not_feedback_or_srm() {
    let mut r = example();
    r.start(T0).unwrap();
    let waiting = all_but(&r, "disagreement(label)", Verdict::Inconclusive);
    assert!(r.observe(T0 + 72 * H, &obs(10_000, waiting)).is_none());
    let mut readings = all_but(&r, "feedback.conversion", Verdict::Inconclusive);
    readings.retain(|g| g.guardrail != "srm");
    assert_eq!(r.observe(T0 + 72 * H, &obs(10_000, readings)).unwrap().to, Phase::Step(1));
}

#[test]
fn a_failure_mid_step_rolls_back_at_once() {
    let mut r = example();
    r.start(T0).unwrap();
    r.observe(T0 + 72 * H, &obs(10_000, all(&r, Verdict::Pass))).unwrap();
    let failing = all_but(&r, "latency_p99", Verdict::Fail);
    // One hour into a 24-hour step, with too few requests: no matter.
    let t = r.observe(T0 + 73 * H, &obs(12, failing.clone())).unwrap();
    assert_eq!((t.from, t.to, t.step, t.cause), (Phase::Step(1), Phase::RolledBack, Some(1), Cause::Failure));
    assert_eq!(t.traffic, Traffic::BASELINE);
    assert_eq!(t.guardrails, failing);
    assert!(
        t.reason.starts_with("guardrail failed at step 1 (weight 5%): latency_p99 = 0.001 (threshold 1.25)"),
        "{}",
        t.reason
    );
    assert!(t.reason.ends_with("rolled back: all traffic to the baseline"), "{}", t.reason);
    assert_eq!((r.phase(), r.traffic()), (Phase::RolledBack, Traffic::BASELINE));
    assert!(r.observe(T0 + 74 * H, &obs(12, all(&r, Verdict::Pass))).is_none());
}

#[test]
fn with_on_failure_pause_a_failure_pauses_with_traffic_to_the_baseline() {
    let mut r = small("pause");
    r.start(T0).unwrap();
    assert_eq!(r.traffic(), weight(10.0));
    let fail = vec![reading("error_rate", 0.05, Verdict::Fail)];
    let t = r.observe(T0 + 1000, &obs(5, fail.clone())).unwrap();
    assert_eq!((t.to, t.traffic), (Phase::Paused { step: 0, by_failure: true }, Traffic::BASELINE));
    assert!(t.reason.contains("error_rate = 0.05 (threshold 0.01)"), "{}", t.reason);
    assert!(t.reason.ends_with("paused: all traffic to the baseline until resumed or rolled back by hand"));
    // Stale failing readings do not fail it twice, nor passing ones advance it.
    assert!(r.observe(T0 + 2000, &obs(5, fail)).is_none());
    assert!(r.observe(T0 + 60_000, &obs(500, vec![reading("error_rate", 0.0, Verdict::Pass)])).is_none());
    assert_eq!(r.history().len(), 2);
    // Resumed, the step starts over: its traffic, hold and count.
    let t = r.resume(T0 + 100_000, "fixed the feature pipeline").unwrap();
    assert_eq!((t.to, t.traffic, t.cause), (Phase::Step(0), weight(10.0), Cause::Command));
    assert_eq!(r.state().step_started_ms, Some(T0 + 100_000));
    let pass = vec![reading("error_rate", 0.0, Verdict::Pass)];
    assert!(r.observe(T0 + 109_999, &obs(100, pass.clone())).is_none());
    assert_eq!(r.observe(T0 + 110_000, &obs(100, pass)).unwrap().to, Phase::Step(1));
}

#[test]
fn pause_holds_the_traffic_and_resume_restarts_the_hold() {
    let mut r = small("rollback");
    r.start(T0).unwrap();
    let pass = vec![reading("error_rate", 0.0, Verdict::Pass)];
    r.observe(T0 + 5_000, &obs(50, pass.clone()));
    let t = r.pause(T0 + 6_000, "  waiting for the on-call  ").unwrap();
    assert_eq!(
        (t.to, t.traffic, t.cause),
        (Phase::Paused { step: 0, by_failure: false }, weight(10.0), Cause::Command)
    );
    assert_eq!(t.reason, "paused by hand: waiting for the on-call; traffic holds at candidate 10%");
    assert_eq!(t.guardrails, pass, "a command records the last readings");
    assert_eq!(r.traffic(), weight(10.0));
    // Paused, a done step does not advance.
    assert!(r.observe(T0 + 60_000, &obs(1000, pass.clone())).is_none());
    let t = r.resume(T0 + 100_000, "on-call is back").unwrap();
    assert!(t.reason.starts_with("resumed by hand: on-call is back; step 0 (weight 10%) starts its hold again"));
    assert!(r.observe(T0 + 109_999, &obs(1000, pass.clone())).is_none(), "the hold counts from the resume");
    assert_eq!(r.observe(T0 + 110_000, &obs(1000, pass)).unwrap().to, Phase::Step(1));
}

#[test]
fn a_failure_while_paused_by_hand_still_acts() {
    let mut r = small("rollback");
    r.start(T0).unwrap();
    r.pause(T0 + 1, "look").unwrap();
    let t = r.observe(T0 + 2, &obs(1, vec![reading("error_rate", 0.2, Verdict::Fail)])).unwrap();
    assert_eq!((t.from, t.to), (Phase::Paused { step: 0, by_failure: false }, Phase::RolledBack));
    assert!(t.reason.starts_with("guardrail failed at step 0 (weight 10%): error_rate = 0.2"), "{}", t.reason);
}

#[test]
fn promote_and_rollback_by_hand() {
    let mut r = example();
    r.start(T0).unwrap();
    r.observe(T0 + 72 * H, &obs(10_000, all(&r, Verdict::Pass))).unwrap();
    let t = r.promote(T0 + 73 * H, "metrics look fine, skipping ahead").unwrap();
    assert_eq!((t.from, t.to, t.step, t.traffic), (Phase::Step(1), Phase::Promoted, Some(1), Traffic::CANDIDATE));
    assert_eq!(t.reason, "promoted by hand at step 1: metrics look fine, skipping ahead; all traffic to the candidate");

    let mut r = example();
    let t = r.rollback(T0, "candidate withdrawn").unwrap();
    assert_eq!((t.from, t.to, t.step, t.traffic), (Phase::Pending, Phase::RolledBack, None, Traffic::BASELINE));
    assert_eq!(t.reason, "rolled back by hand at pending: candidate withdrawn; all traffic to the baseline");

    let mut r = small("pause");
    r.start(T0).unwrap();
    r.observe(T0 + 1, &obs(1, vec![reading("error_rate", 0.2, Verdict::Fail)])).unwrap();
    let t = r.rollback(T0 + 2, "confirmed regression").unwrap();
    assert_eq!((t.from, t.to), (Phase::Paused { step: 0, by_failure: true }, Phase::RolledBack));
}

#[test]
fn commands_are_refused_where_they_do_not_apply() {
    let mut r = small("rollback");
    assert_eq!(r.pause(T0, "x").unwrap_err(), "rollout has not started");
    assert_eq!(r.resume(T0, "x").unwrap_err(), "rollout is not paused (it has not started)");
    assert!(r.observe(T0, &obs(1, vec![reading("error_rate", 1.0, Verdict::Fail)])).is_none(), "pending");
    r.start(T0).unwrap();
    assert_eq!(r.start(T0).unwrap_err(), "rollout has already started (it is step 0)");
    assert_eq!(r.resume(T0, "x").unwrap_err(), "rollout is not paused (it is at step 0)");
    for empty in ["", "   "] {
        assert_eq!(r.pause(T0, empty).unwrap_err(), "a reason is required");
        assert_eq!(r.promote(T0, empty).unwrap_err(), "a reason is required");
        assert_eq!(r.rollback(T0, empty).unwrap_err(), "a reason is required");
    }
    r.pause(T0, "x").unwrap();
    assert_eq!(r.pause(T0, "x").unwrap_err(), "rollout is already paused at step 0");
    r.rollback(T0, "x").unwrap();
    let history = r.history().len();
    for (name, e) in [
        ("start", r.start(T0).map(|_| ()).unwrap_err()),
        ("pause", r.pause(T0, "x").map(|_| ()).unwrap_err()),
        ("resume", r.resume(T0, "x").map(|_| ()).unwrap_err()),
        ("promote", r.promote(T0, "x").map(|_| ()).unwrap_err()),
        ("rollback", r.rollback(T0, "x").map(|_| ()).unwrap_err()),
    ] {
        assert_eq!(e, "rollout is already rolled back", "{name}");
    }
    let mut p = small("rollback");
    p.promote(T0, "x").unwrap();
    assert_eq!(p.rollback(T0, "x").unwrap_err(), "rollout is already promoted");
    assert_eq!(p.start(T0).unwrap_err(), "rollout is already promoted");
    assert_eq!(r.history().len(), history, "a refused command records nothing");
}

#[test]
fn a_saved_state_carries_on_in_the_same_step() {
    let mut r = example();
    r.start(T0).unwrap();
    r.observe(T0 + 72 * H, &obs(10_000, all(&r, Verdict::Pass))).unwrap();
    let t1 = T0 + 72 * H;
    r.observe(t1 + 3 * H, &obs(1_200, all(&r, Verdict::Inconclusive)));
    let saved = serde_json::to_string(r.state()).unwrap();

    let state: RolloutState = serde_json::from_str(&saved).unwrap();
    assert_eq!(&state, r.state());
    let mut back = Rollout::restore(plan_of(plan::EXAMPLE), state).unwrap();
    assert_eq!((back.phase(), back.state().step_started_ms, back.traffic()), (Phase::Step(1), Some(t1), weight(5.0)));
    assert_eq!(back.status(t1 + 3 * H).candidate_requests_in_step, 1_200);
    let pass = all(&back, Verdict::Pass);
    assert!(back.observe(t1 + 24 * H - 1, &obs(5_000, pass.clone())).is_none(), "the hold counts from before");
    assert_eq!(back.observe(t1 + 24 * H, &obs(5_000, pass)).unwrap().to, Phase::Step(2));
    assert_eq!(back.history().len(), 3);

    // A state that does not fit the plan is refused.
    let mut state: RolloutState = serde_json::from_str(&saved).unwrap();
    state.phase = Phase::Step(2);
    let e = Rollout::restore(small("rollback").plan().clone(), state).unwrap_err();
    assert_eq!(e, "the saved rollout is at 'step 2' but the plan's last step is 1");
    let mut state: RolloutState = serde_json::from_str(&saved).unwrap();
    state.phase = Phase::Paused { step: 2, by_failure: false };
    let e = Rollout::restore(small("rollback").plan().clone(), state).unwrap_err();
    assert_eq!(e, "the saved rollout is at 'paused at step 2' but the plan's last step is 1");
    let mut state: RolloutState = serde_json::from_str(&saved).unwrap();
    state.step_started_ms = None;
    assert!(Rollout::restore(plan_of(plan::EXAMPLE), state).unwrap_err().contains("no step start time"));
}

#[test]
fn the_history_records_time_step_readings_and_reasons() {
    let mut r = small("rollback");
    r.start(T0).unwrap();
    let pass = vec![reading("error_rate", 0.002, Verdict::Pass)];
    r.observe(T0 + 12_000, &obs(150, pass.clone())).unwrap();
    r.observe(T0 + 13_000, &obs(20, vec![reading("error_rate", 0.004, Verdict::Inconclusive)])).unwrap();
    let h = r.history();
    assert_eq!(h.len(), 3);
    assert_eq!((h[0].at_ms, h[0].step, h[0].from, h[0].to), (T0, None, Phase::Pending, Phase::Step(0)));
    assert_eq!(h[0].reason, "started: step 0 of 2 (weight 10%)");
    assert_eq!((h[1].at_ms, h[1].step, h[1].guardrails.clone()), (T0 + 12_000, Some(0), pass));
    assert_eq!(
        h[1].reason,
        "step 0 (weight 10%) done: 12s in the step (hold 10s), 150 candidate requests (at least 100), every guardrail passing; now step 1 (weight 100%)"
    );
    assert_eq!(
        (h[2].at_ms, h[2].step, h[2].to, h[2].traffic),
        (T0 + 13_000, Some(1), Phase::Promoted, Traffic::CANDIDATE)
    );
    assert_eq!(h[2].guardrails[0].value, Some(0.004));
    assert_eq!(
        h[2].reason,
        "step 1 (weight 100%) done: 1s in the step (hold 0s), 20 candidate requests (at least 0), no guardrail failing; promoted: all traffic to the candidate"
    );
    // The history is plain data: it reads back as it was written.
    let json = serde_json::to_value(h).unwrap();
    assert_eq!(json[1]["to"], serde_json::json!({ "step": 1 }));
    assert_eq!(json[2]["to"], "promoted");
    assert_eq!(json[2]["guardrails"][0]["verdict"], "inconclusive");
    assert_eq!(serde_json::from_value::<Vec<Transition>>(json).unwrap(), h);
}

#[test]
fn the_last_step_promotes_without_passes_but_not_past_a_failure() {
    let mut r = small("rollback");
    r.start(T0).unwrap();
    r.observe(T0 + 10_000, &obs(100, vec![reading("error_rate", 0.0, Verdict::Pass)])).unwrap();
    let t = r.observe(T0 + 10_001, &obs(0, vec![reading("error_rate", 0.3, Verdict::Fail)])).unwrap();
    assert_eq!(t.to, Phase::RolledBack);
    // No readings at all is enough at 100 %, and an intermediate step with no hold still needs them.
    let mut r = Rollout::new(plan_of("kind: rollout\nbaseline: { model: a }\ncandidate: { model: b }\nsteps: [ { weight: 50 }, { weight: 100 } ]\nguardrails: [ { metric: srm } ]\n"));
    r.start(T0).unwrap();
    assert!(r.observe(T0, &obs(0, vec![])).is_none());
    assert!(r.observe(T0, &obs(0, vec![reading("srm", 0.4, Verdict::Inconclusive)])).is_none());
    assert_eq!(r.observe(T0, &obs(0, vec![reading("srm", 0.4, Verdict::Pass)])).unwrap().to, Phase::Step(1));
    let t = r.observe(T0 + 1, &obs(0, vec![])).unwrap();
    assert_eq!(t.to, Phase::Promoted);
    assert!(t.reason.contains("no guardrail readings; promoted"), "{}", t.reason);
}

#[test]
fn a_clock_going_back_and_odd_numbers_do_not_break_it() {
    let mut r = small("rollback");
    r.start(T0).unwrap();
    let odd = vec![GuardrailReading {
        guardrail: "error_rate".into(),
        value: Some(f64::NAN),
        threshold: f64::INFINITY,
        verdict: Verdict::Pass,
    }];
    assert!(r.observe(T0 - 60_000, &obs(1000, odd)).is_none(), "time before the start is no time in the step");
    assert_eq!(r.state().last_readings[0].value, None);
    assert_eq!(r.state().last_readings[0].threshold, 0.01, "from the plan");
    assert_eq!(r.status(T0 - 60_000).time_in_step_ms, Some(0));
    let json = serde_json::to_string(r.state()).unwrap();
    assert_eq!(&serde_json::from_str::<RolloutState>(&json).unwrap(), r.state());
}

#[test]
fn status_shows_the_step_its_progress_the_guardrails_and_the_history() {
    let mut r = example();
    let s = r.status(T0);
    assert_eq!(
        (s.phase, s.step, s.steps, s.time_in_step_ms, s.traffic),
        (Phase::Pending, None, 5, None, Traffic::BASELINE)
    );
    assert!(s.guardrails.iter().all(|g| g.verdict.is_none() && !g.required));

    r.start(T0).unwrap();
    r.observe(T0 + 72 * H, &obs(10_000, all(&r, Verdict::Pass))).unwrap();
    let t1 = T0 + 72 * H;
    let mut readings = all_but(&r, "error_rate", Verdict::Inconclusive);
    readings.push(reading("queue_depth", 3.0, Verdict::Pass));
    r.observe(t1 + 6 * H, &obs(2_000, readings));
    let s = r.status(t1 + 10 * H);
    assert_eq!((s.phase, s.step, s.step_started_ms), (Phase::Step(1), Some(1), Some(t1)));
    assert_eq!(s.step_definition, Some(r.plan().steps[1]));
    assert_eq!((s.time_in_step_ms, s.hold_remaining_ms), (Some(10 * H), Some(14 * H)));
    assert_eq!((s.candidate_requests_in_step, s.requests_needed), (2_000, Some(3_000)));
    assert_eq!(s.traffic, weight(5.0));
    let g: Vec<(&str, &str, Option<Verdict>, bool)> =
        s.guardrails.iter().map(|g| (g.guardrail.as_str(), g.limit.as_str(), g.verdict, g.required)).collect();
    assert_eq!(
        g,
        [
            ("error_rate", "max_increase", Some(Verdict::Inconclusive), true),
            ("latency_p99", "max_ratio", Some(Verdict::Pass), true),
            ("disagreement(label)", "max", Some(Verdict::Pass), false),
            ("feedback.conversion", "max_decrease", Some(Verdict::Pass), true),
            ("srm", "p", Some(Verdict::Pass), true),
            ("queue_depth", "", Some(Verdict::Pass), false),
        ]
    );
    assert_eq!((s.guardrails[0].value, s.guardrails[0].threshold), (Some(0.001), 0.01));
    assert_eq!(s.history.len(), 2);

    r.pause(t1 + 11 * H, "x").unwrap();
    let s = r.status(t1 + 12 * H);
    assert_eq!(
        (s.step, s.time_in_step_ms, s.hold_remaining_ms, s.requests_needed),
        (Some(1), Some(12 * H), None, None)
    );
    assert!(s.guardrails.iter().all(|g| !g.required));
    r.rollback(t1 + 13 * H, "x").unwrap();
    let s = r.status(t1 + 14 * H);
    assert_eq!((s.phase, s.step, s.time_in_step_ms, s.traffic), (Phase::RolledBack, None, None, Traffic::BASELINE));
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["phase"], "rolled_back");
    assert_eq!(serde_json::from_value::<Status>(json).unwrap(), s);
}
