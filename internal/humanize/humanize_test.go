package humanize

import (
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Hour:                      "0s",
		45 * time.Second:                "45s",
		12*time.Minute + 59*time.Second: "12m",
		5*time.Hour + 7*time.Minute:     "5h07m",
		47 * time.Hour:                  "47h00m",
		30 * 24 * time.Hour:             "30d",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%s) = %q, want %q", d, got, want)
		}
	}
}
