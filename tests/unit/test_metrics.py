"""Every metric of the operations contract exists once, with its labels, in each server's own registry."""

from __future__ import annotations

from service.metrics import Metrics

CONTRACT = {
    "vae_requests_total": ("counter", {"method", "code"}),
    "vae_request_duration_seconds": ("histogram", {"method"}),
    "vae_queue_wait_seconds": ("histogram", {"graph"}),
    "vae_batch_size_items": ("histogram", {"graph"}),
    "vae_inference_duration_seconds": ("histogram", {"graph"}),
    "vae_queue_depth_items": ("gauge", {"graph"}),
    "vae_in_flight_requests": ("gauge", set()),
    "vae_items_total": ("counter", {"method"}),
    "vae_model_info": ("gauge", {"name", "version", "provider"}),
    "vae_deadline_expired_total": ("counter", {"graph"}),
    "vae_model_load_failures_total": ("counter", {"name"}),
    "vae_model_files_changed_total": ("counter", {"name", "version"}),
    "vae_score_log_likelihood_nats": ("histogram", {"model", "version"}),
    "vae_score_reference_log_likelihood_nats": ("gauge", {"model", "version", "q", "k"}),
}


def _families(metrics: Metrics) -> dict[str, tuple[str, set[str]]]:
    found = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {label for sample in family.samples for label in sample.labels if label != "le"}
        found[name] = (family.type, labels)
    return found


def test_the_contract_metrics_and_nothing_else() -> None:
    metrics = Metrics()
    decode = metrics.method("Decode")
    decode.in_flight.inc()
    decode.finished("OK", 0.001, items=3)
    metrics.requests.labels("Decode", "NOT_FOUND").inc()
    metrics.items.labels("Decode").inc()
    metrics.model_info.labels("mnist", "1", "CPUExecutionProvider").set(1)
    metrics.model_load_failures.labels("mnist").inc()
    metrics.model_files_changed.labels("mnist", "1").inc()
    metrics.score_log_likelihood.labels("mnist", "1").observe(-85.0)
    metrics.score_reference.labels("mnist", "1", "0.5", "64").set(-87.0)
    assert _families(metrics) == CONTRACT


def test_graph_series_exist_before_any_traffic() -> None:
    registry = Metrics().registry
    for graph in ("encoder", "decoder"):
        assert registry.get_sample_value("vae_batch_size_items_count", {"graph": graph}) == 0
        assert registry.get_sample_value("vae_queue_depth_items", {"graph": graph}) == 0
        assert registry.get_sample_value("vae_deadline_expired_total", {"graph": graph}) == 0


def test_two_servers_in_one_process_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.graph("decoder").batch_ran(5, 0.01)
    assert first.registry.get_sample_value("vae_batch_size_items_sum", {"graph": "decoder"}) == 5
    assert second.registry.get_sample_value("vae_batch_size_items_sum", {"graph": "decoder"}) == 0


def test_queue_depth_adds_up_across_batchers_of_one_graph() -> None:
    metrics = Metrics()
    version1, version2 = metrics.graph("encoder"), metrics.graph("encoder")
    version1.queued(3)
    version2.queued(4)
    version1.queued(-3)
    assert metrics.registry.get_sample_value("vae_queue_depth_items", {"graph": "encoder"}) == 4


def test_a_finished_call_is_counted_once_with_its_duration_and_items() -> None:
    metrics = Metrics()
    decode = metrics.method("Decode")
    decode.in_flight.inc()
    decode.finished("OK", 0.0015, items=3)
    decode.in_flight.inc()
    decode.finished("DEADLINE_EXCEEDED", 0.2)
    value = metrics.registry.get_sample_value
    assert value("vae_requests_total", {"method": "Decode", "code": "OK"}) == 1
    assert value("vae_requests_total", {"method": "Decode", "code": "DEADLINE_EXCEEDED"}) == 1
    assert value("vae_items_total", {"method": "Decode"}) == 3
    assert value("vae_in_flight_requests") == 0
    # 0.0015 s falls in the 0.002 bucket, 0.2 s in the 0.2 bucket (le: less than or equal).
    assert value("vae_request_duration_seconds_bucket", {"method": "Decode", "le": "0.001"}) == 0
    assert value("vae_request_duration_seconds_bucket", {"method": "Decode", "le": "0.002"}) == 1
    assert value("vae_request_duration_seconds_bucket", {"method": "Decode", "le": "0.2"}) == 2
    assert value("vae_request_duration_seconds_bucket", {"method": "Decode", "le": "+Inf"}) == 2
    assert value("vae_request_duration_seconds_count", {"method": "Decode"}) == 2
    assert value("vae_request_duration_seconds_sum", {"method": "Decode"}) == 0.2015


def test_scores_fill_buckets_and_carry_no_sum() -> None:
    metrics = Metrics()
    scores = metrics.score_log_likelihood.labels("mnist", "1")
    for nats in (-84.0, -85.0, -600.0):
        scores.observe(nats)
    value = metrics.registry.get_sample_value
    labels = {"model": "mnist", "version": "1"}
    assert value("vae_score_log_likelihood_nats_bucket", {**labels, "le": "-500.0"}) == 1
    assert value("vae_score_log_likelihood_nats_bucket", {**labels, "le": "-85.0"}) == 2
    assert value("vae_score_log_likelihood_nats_bucket", {**labels, "le": "+Inf"}) == 3
    # OpenMetrics: a histogram with negative buckets has no _sum (nor _count: the +Inf bucket).
    assert value("vae_score_log_likelihood_nats_sum", labels) is None
