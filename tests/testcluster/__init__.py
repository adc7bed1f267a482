"""Test-only Kubernetes environment for SmartSpec's integration tests.

A real etcd + kube-apiserver + kube-controller-manager started as loopback processes
(:mod:`testcluster.controlplane`), a test-only "local node" that binds Pods and runs their
commands as local subprocesses (:mod:`testcluster.localnode`), a real S3 server (SeaweedFS,
:mod:`testcluster.s3`) and the pytest plugin wiring them up (:mod:`testcluster.plugin`).
See specs/TEST-001-control-plane.md.
"""

from __future__ import annotations
