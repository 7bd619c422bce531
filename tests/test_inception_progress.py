"""The Inception extractor says how fast it goes when it runs long (a few hundred FID images
take minutes on a CPU and looked hung)."""

from __future__ import annotations

import numpy as np

from fsq_jax.eval import inception


def test_throughput_logs_once_per_period_with_the_rate_since_the_last_line():
    lines: list[str] = []
    meter = inception.Throughput(every_s=30.0, log=lines.append)
    meter.add(50, 20.0)  # 20 s: not yet
    assert lines == []
    meter.add(50, 20.0)  # 40 s: 100 images in 40 s
    assert lines == ["InceptionV3 features: 100 images so far, 2.5 images/s (40s in the network)"]
    meter.add(200, 10.0)
    meter.add(200, 10.0)
    meter.add(200, 10.0)  # 30 s more: 600 images at 20/s
    assert lines[1] == ("InceptionV3 features: 700 images so far, 20.0 images/s (1m10s in the "
                        "network)")
    assert (meter.images, meter.seconds) == (700, 70.0)


def test_extractor_reports_across_calls(monkeypatch):
    """Evaluators call the extractor once per batch: the time adds up across calls."""
    monkeypatch.setattr(inception, "_pool3",
                        lambda module, variables, images: np.zeros((len(images), 2048)))
    ticks = iter(np.arange(0.0, 1000.0, 5.0))  # every network call takes 5 s
    lines: list[str] = []
    extractor = inception.FeatureExtractor(batch_size=4, module_and_variables=(None, {}),
                                           report_every_s=30.0, clock=lambda: next(ticks))
    extractor.throughput.log = lines.append
    images = np.zeros((8, 16, 16, 3), np.uint8)
    for _ in range(3):  # 3 calls x 2 chunks x 5 s
        assert extractor(images).shape == (8, 2048)
    assert lines == ["InceptionV3 features: 24 images so far, 0.8 images/s (30s in the network)"]
    silent = inception.FeatureExtractor(module_and_variables=(None, {}), report_every_s=None)
    assert silent.throughput is None and silent(images).shape == (8, 2048)
