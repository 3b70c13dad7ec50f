// Package charts holds Tether's Helm chart, charts/tether, embedded so that
// `tether install` renders it in-process (internal/install) without a helm
// binary or a checkout.
package charts

import "embed"

// FS is the chart folder: tether/Chart.yaml, tether/values.yaml,
// tether/values.schema.json, tether/templates/*, tether/crds/*.
//
//go:embed all:tether
var FS embed.FS

// Tether is the chart's folder in FS.
const Tether = "tether"
