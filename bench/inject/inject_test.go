package main

import (
	"encoding/json"
	"testing"

	"github.com/tether-mesh/tether/pkg/inject"
)

// TestTypicalReview checks the benchmark's request is injected (so the
// benchmark measures real work) and logs its sizes.
func TestTypicalReview(t *testing.T) {
	body, err := typicalReview()
	if err != nil {
		t.Fatal(err)
	}
	wh, err := inject.NewWebhook(inject.DefaultConfig("registry.example/tether:bench"), 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, result, err := wh.Review(body)
	if err != nil || result != inject.ResultInjected {
		t.Fatalf("result %q err %v", result, err)
	}
	var rv struct {
		Response struct{ Patch []byte } `json:"response"`
	}
	json.Unmarshal(out, &rv)
	var ops []inject.Op
	if err := json.Unmarshal(rv.Response.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	t.Logf("request %d bytes, response %d bytes, patch %d bytes, %d operations", len(body), len(out), len(rv.Response.Patch), len(ops))
}
