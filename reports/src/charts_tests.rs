use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn nice_steps_are_one_two_or_five_times_a_power_of_ten() {
    for (raw, step) in [(0.37, 0.5), (1.2, 2.0), (3.0, 5.0), (7.0, 10.0), (0.02, 0.02), (45.0, 50.0)] {
        assert!(close(nice_step(raw), step), "{raw} -> {}", nice_step(raw));
    }
}

#[test]
fn linear_scales_widen_to_round_ticks() {
    let s = Scale::linear(61.3, 78.9);
    assert_eq!(s, Scale::Linear { lo: 60.0, hi: 80.0 });
    assert_eq!(s.ticks(), [60.0, 65.0, 70.0, 75.0, 80.0]);
    assert!(close(s.unit(70.0).unwrap(), 0.5));
    assert_eq!(Scale::linear(0.0, 2.3).ticks(), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!(Scale::linear(0.0, 0.3).ticks(), [0.0, 0.1, 0.2, 0.3]);
    // One value still gets a range around it.
    assert_eq!(Scale::linear(70.0, 70.0).ticks(), [69.0, 69.5, 70.0, 70.5, 71.0]);
}

#[test]
fn log_scales_cover_whole_decades() {
    let s = Scale::log(0.04, 85.8);
    assert_eq!(s, Scale::Log { lo: 0.01, hi: 100.0 });
    assert_eq!(s.ticks(), [0.01, 0.1, 1.0, 10.0, 100.0]);
    assert!(close(s.unit(1.0).unwrap(), 0.5));
    assert!(close(s.unit(0.01).unwrap(), 0.0));
    assert_eq!(s.unit(0.0), None);
    // Within one decade the 2 and 5 ticks are added.
    assert_eq!(Scale::log(0.2, 0.6).ticks(), [0.1, 0.2, 0.5, 1.0]);
    // A single power of ten gets the decade above it.
    assert_eq!(Scale::log(1.0, 1.0), Scale::Log { lo: 1.0, hi: 10.0 });
}

#[test]
fn the_pareto_front_keeps_undominated_points_by_cost() {
    // (cost, accuracy): 2 is dominated by 1 (cheaper and more accurate); 4 equals 1.
    let points = [(1.0, 70.0), (2.0, 75.0), (3.0, 72.0), (0.5, 60.0), (2.0, 75.0)];
    assert_eq!(pareto_front(&points), [3, 0, 1, 4]);
    assert_eq!(pareto_front(&[(1.0, 50.0)]), [0]);
    assert!(pareto_front(&[]).is_empty());
    // Same cost, lower accuracy: dominated.
    assert_eq!(pareto_front(&[(1.0, 50.0), (1.0, 60.0)]), [1]);
}

fn point(label: &str, cost: f64, accuracy: f64, index: usize) -> Point {
    Point { label: label.into(), cost, accuracy, style: Style::of(index), published: false }
}

#[test]
fn a_log_scatter_puts_zero_costs_in_their_own_slot_and_draws_the_front() {
    let chart = Scatter {
        title: "accuracy vs parameters",
        x_label: "trainable parameters (M)",
        y_label: "accuracy (%)",
        log_x: true,
        x_format: |v| v.to_string(),
        points: vec![
            point("linear_probe", 0.0, 52.9, 0),
            point("lora <r8>", 0.29, 72.2, 1),
            point("full", 85.8, 65.6, 2),
            Point { published: true, ..point("DTL", 0.04, 74.6, 0) },
        ],
    };
    let (xs, zero) = chart.x_scale().unwrap();
    assert_eq!(xs, Scale::Log { lo: 0.01, hi: 100.0 });
    assert!(zero);
    let x = |v| chart.x_px(xs, true, v).unwrap();
    assert!(close(x(0.0), LEFT + PAD), "{}", x(0.0));
    assert!(close(x(100.0), W - RIGHT - PAD));
    let span = W - LEFT - RIGHT - 2.0 * PAD;
    assert!(close(x(0.01), LEFT + PAD + span * ZERO_SLOT));
    assert!(close(x(1.0), LEFT + PAD + span * (ZERO_SLOT + (1.0 - ZERO_SLOT) / 2.0)));
    let ys = chart.y_scale();
    assert_eq!(ys, Scale::Linear { lo: 50.0, hi: 75.0 });
    assert!(close(Scatter::y_px(ys, 75.0), TOP + PAD));
    assert!(close(Scatter::y_px(ys, 50.0), H - BOTTOM - PAD));

    let svg = chart.svg().unwrap();
    // The front is linear_probe then lora (full is dominated; DTL is published and left out).
    let (x0, y0) = (x(0.0), Scatter::y_px(ys, 52.9));
    let (x1, y1) = (x(0.29), Scatter::y_px(ys, 72.2));
    assert!(
        svg.contains(&format!(r#"<path class="pareto" d="M{x0:.1} {y0:.1}H{x1:.1}V{y1:.1}"/>"#)),
        "{svg}"
    );
    assert_eq!(svg.matches(r#"class="front""#).count(), 2);
    assert!(svg.contains("lora &lt;r8&gt;") && !svg.contains("<r8>"));
    assert!(svg.contains(r#"class="label published""#));
    for tick in [">0<", ">0.01<", ">100<"] {
        assert!(svg.contains(tick), "no tick {tick}");
    }
}

#[test]
fn a_linear_scatter_starts_costs_at_zero_and_skips_empty_charts() {
    let chart = Scatter {
        title: "t",
        x_label: "x",
        y_label: "y",
        log_x: false,
        x_format: |v| v.to_string(),
        points: vec![point("a", 2.2, 70.0, 0), point("b", 1.1, 60.0, 1)],
    };
    assert_eq!(chart.x_scale().unwrap(), (Scale::Linear { lo: 0.0, hi: 2.5 }, false));
    let log_zero_only = Scatter { log_x: true, points: vec![point("a", 0.0, 70.0, 0)], ..chart.clone() };
    assert!(log_zero_only.svg().is_none());
    assert!(Scatter { points: vec![], ..chart }.svg().is_none());
}
