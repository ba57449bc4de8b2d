//go:build tools

// Package harness pins promtool, Prometheus's rule checker and rule unit-test
// runner, which the alert tests (operator/tests/e2e/alerts.rs) drive. `go build`
// builds it from this module's requirements.
package harness

import _ "github.com/prometheus/prometheus/cmd/promtool"
