package cluster_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/inject"
)

// suggest: the chain's traffic (web -> api -> db) is observed by the
// sidecars and reported to discovery; `tether policy suggest`, the real
// CLI on the node, reading discovery's table through a port-forward,
// proposes AccessPolicies for story's Services; applied (enforcing), the
// same traffic passes with no denial, and a call the mesh never saw (db ->
// api) is denied. The suggested policies are deleted at the end, which
// leaves the story as it was.
func (s *storyRun) suggest(t *testing.T) {
	for range 3 {
		if out, err := s.get(story); err != nil || out != s.chainAnswer() {
			t.Fatalf("the chain before suggesting: %q, %v", out, err)
		}
	}
	// The sidecars report every 30s (--flow-report-interval).
	var ps []policy.AccessPolicy
	eventually(t, "suggestions for api (from web) and db (from api)", 2*time.Minute, 5*time.Second, func() error {
		out, err := s.n.shell(t, 2*time.Minute, "tether policy suggest -n "+story)
		if err != nil {
			return err
		}
		ps, err = suggested(out)
		if err != nil {
			return err
		}
		for _, want := range [][2]string{{"api", "web"}, {"db", "api"}} {
			if !slices.ContainsFunc(ps, func(p policy.AccessPolicy) bool { return allowsSA(p, want[0], want[1]) }) {
				return fmt.Errorf("no suggested policy lets %s reach %s:\n%s", want[1], want[0], out)
			}
		}
		return nil
	})
	for _, p := range ps {
		if p.Namespace != story || p.Labels["tether.dev/suggested"] != "true" || slices.Equal(p.Spec.Destination.Ports, nil) {
			t.Errorf("suggested policy %s: namespace %q, labels %v, ports %v", p.Name, p.Namespace, p.Labels, p.Spec.Destination.Ports)
		}
		if allowsSA(p, "api", "db") {
			t.Errorf("suggested policy %s lets db reach api, which never called it", p.Name)
		}
	}
	for _, line := range []string{
		"tether policy graph --observed -n " + story,
		"tether policy suggest -n " + story,
		"tether policy suggest -n " + story + " --diff",
	} {
		out, err := s.n.shell(t, 2*time.Minute, line)
		t.Logf("$ %s\n%s(%v)", line, out, err)
	}

	out, err := s.n.shell(t, 2*time.Minute, "tether policy suggest -n "+story+" | kubectl apply -f -")
	t.Logf("$ tether policy suggest -n %s | kubectl apply -f -\n%s", story, out)
	if err != nil {
		t.Fatalf("applying the suggestions: %v", err)
	}
	applied := time.Now()
	t.Cleanup(func() {
		s.n.kubectl(time.Minute, "-n", story, "delete", "accesspolicy", "-l", "tether.dev/suggested=true", "--ignore-not-found")
	})

	// The call the mesh never saw: db's own sidecar refuses it once the
	// policies reach it.
	apiIP := strings.TrimSpace(s.n.must(t, time.Minute, "-n", story, "get", "service", "api", "-o", "jsonpath={.spec.clusterIP}"))
	apiAddr := apiIP + ":8080"
	eventually(t, "db's connection to api "+apiAddr+" refused", time.Minute, time.Second, func() error {
		out, code, err := s.fromApp("db", "dial", apiAddr)
		if code != 1 {
			return fmt.Errorf("dial %s from db: want exit 1 (refused), got exit %d: %q %v", apiAddr, code, out, err)
		}
		t.Logf("dial %s from db: %v", apiAddr, lastLine(err))
		return nil
	})
	s.findAccess(t, "db", "the denial of db -> api", func(e accessEntry) bool {
		return e.Direction == "outbound" && e.Decision == "deny" && e.SourceID == "spiffe://cluster.local/ns/story/sa/db" && e.Destination == apiAddr
	})

	// The same traffic again: it passes, and no sidecar of the chain
	// denies anything but db's call above.
	replayed := time.Now()
	for range 3 {
		if out, err := s.get(story); err != nil || out != s.chainAnswer() {
			t.Errorf("the chain under the suggested policies: %q, %v", out, err)
		}
	}
	for _, app := range apps {
		denials, err := s.denialsSince(app, applied)
		if err != nil {
			t.Errorf("%s: %v", app, err)
			continue
		}
		for _, e := range denials {
			if app == "db" && e.Direction == "outbound" && e.Destination == apiAddr {
				continue
			}
			t.Errorf("%s's sidecar denied a connection under the suggested policies (the replay began %s): %+v", app, replayed.Format(time.RFC3339), e)
		}
	}
	t.Logf("replayed the chain 3 times under the suggested policies: no denial; db -> api refused")

	s.n.must(t, time.Minute, "-n", story, "delete", "accesspolicy", "-l", "tether.dev/suggested=true")
	eventually(t, "db reaches api again once the suggested policies are deleted", time.Minute, 2*time.Second, func() error {
		_, _, err := s.fromApp("db", "dial", apiAddr)
		return err
	})
}

// suggested parses the suggestions' YAML documents.
func suggested(out string) ([]policy.AccessPolicy, error) {
	var ps []policy.AccessPolicy
	for _, doc := range strings.Split(out, "\n---\n") {
		var p policy.AccessPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
			return nil, fmt.Errorf("a document is not an AccessPolicy: %v\n%s", err, doc)
		}
		if p.Kind == "" {
			continue // the header's comments
		}
		if err := p.Validate(); err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		return nil, errors.New("no policy in:\n" + out)
	}
	return ps, nil
}

// allowsSA says whether p lets story's service account sa reach service svc.
func allowsSA(p policy.AccessPolicy, svc, sa string) bool {
	return p.Spec.Destination.Service == svc && slices.ContainsFunc(p.Spec.Sources, func(s policy.Source) bool {
		return s.ServiceAccount != nil && s.ServiceAccount.Name == sa && s.ServiceAccount.Namespace == story
	})
}

// fromApp runs tether-sample in an app's container of the story namespace
// and returns its output and exit code.
func (s *storyRun) fromApp(app string, args ...string) (string, int, error) {
	out, err := s.n.kubectl(time.Minute, append([]string{"-n", story, "exec", "deploy/" + app, "-c", "app", "--", "tether-sample"}, args...)...)
	var ce *cmdError
	if errors.As(err, &ce) {
		return out, ce.exitCode(), err
	}
	return out, 0, err
}

// denialsSince returns the connections an app's sidecar logged as denied
// at or after since.
func (s *storyRun) denialsSince(app string, since time.Time) ([]accessEntry, error) {
	out, err := s.n.kubectl(time.Minute, "-n", story, "logs", "deploy/"+app, "-c", inject.SidecarContainerName, "--since-time", since.UTC().Format(time.RFC3339))
	if err != nil {
		return nil, err
	}
	var denied []accessEntry
	for _, line := range strings.Split(out, "\n") {
		var e accessEntry
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "connection" && e.Decision == "deny" {
			denied = append(denied, e)
		}
	}
	return denied, nil
}
