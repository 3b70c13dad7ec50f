package policy

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

func validPolicy() AccessPolicy {
	return policy("shop", "web", "web", []int32{80, 8080},
		fromSA("frontend", ""), fromSA("batch", "jobs"), fromNS("monitoring"), fromID("spiffe://example.org/vm/billing"))
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *AccessPolicy)
		want   []string // substrings of the error; none means valid
	}{
		{"valid", func(*AccessPolicy) {}, nil},
		{"valid without namespace or ports", func(p *AccessPolicy) { p.Namespace = ""; p.Spec.Destination.Ports = nil }, nil},
		{"valid dotted SA name", func(p *AccessPolicy) { p.Spec.Sources[0].ServiceAccount.Name = "a.b-c" }, nil},
		{"no name", func(p *AccessPolicy) { p.Name = "" }, []string{"metadata.name: required"}},
		{"bad policy namespace", func(p *AccessPolicy) { p.Namespace = "Shop" }, []string{"metadata.namespace"}},
		{"no service", func(p *AccessPolicy) { p.Spec.Destination.Service = "" }, []string{"spec.destination.service: required"}},
		{"bad service", func(p *AccessPolicy) { p.Spec.Destination.Service = "web.shop" }, []string{"not a valid Service name"}},
		{"long service", func(p *AccessPolicy) { p.Spec.Destination.Service = strings.Repeat("a", 64) }, []string{"not a valid Service name"}},
		{"port 0", func(p *AccessPolicy) { p.Spec.Destination.Ports = []int32{0} }, []string{"ports[0]: 0 is outside 1-65535"}},
		{"port 70000", func(p *AccessPolicy) { p.Spec.Destination.Ports = []int32{80, 70000} }, []string{"ports[1]: 70000 is outside"}},
		{"negative port", func(p *AccessPolicy) { p.Spec.Destination.Ports = []int32{-1} }, []string{"outside 1-65535"}},
		{"duplicate port", func(p *AccessPolicy) { p.Spec.Destination.Ports = []int32{80, 80} }, []string{"listed twice"}},
		{"too many ports", func(p *AccessPolicy) {
			p.Spec.Destination.Ports = nil
			for i := range MaxPorts + 1 {
				p.Spec.Destination.Ports = append(p.Spec.Destination.Ports, int32(i+1))
			}
		}, []string{"at most 64"}},
		{"no sources", func(p *AccessPolicy) { p.Spec.Sources = nil }, []string{"at least one source"}},
		{"too many sources", func(p *AccessPolicy) {
			p.Spec.Sources = make([]Source, MaxSources+1)
			for i := range p.Spec.Sources {
				p.Spec.Sources[i] = fromNS("a")
			}
		}, []string{"at most 256"}},
		{"empty source", func(p *AccessPolicy) { p.Spec.Sources[1] = Source{} }, []string{"sources[1]: set exactly one", "(0 set)"}},
		{"two kinds", func(p *AccessPolicy) { p.Spec.Sources[2].SpiffeID = "spiffe://example.org/x" }, []string{"sources[2]: set exactly one", "(2 set)"}},
		{"three kinds", func(p *AccessPolicy) {
			p.Spec.Sources[0].Namespace = "a"
			p.Spec.Sources[0].SpiffeID = "spiffe://example.org/x"
		}, []string{"(3 set)"}},
		{"SA without name", func(p *AccessPolicy) { p.Spec.Sources[0].ServiceAccount.Name = "" }, []string{"serviceAccount.name: required"}},
		{"bad SA name", func(p *AccessPolicy) { p.Spec.Sources[0].ServiceAccount.Name = "Front_End" }, []string{"not a valid service account name"}},
		{"bad SA namespace", func(p *AccessPolicy) { p.Spec.Sources[1].ServiceAccount.Namespace = "-jobs" }, []string{"serviceAccount.namespace"}},
		{"bad namespace source", func(p *AccessPolicy) { p.Spec.Sources[2].Namespace = "mon/itoring" }, []string{"sources[2].namespace"}},
		{"SPIFFE ID without scheme", func(p *AccessPolicy) { p.Spec.Sources[3].SpiffeID = "example.org/vm/billing" }, []string{"not a SPIFFE ID"}},
		{"SPIFFE ID http scheme", func(p *AccessPolicy) { p.Spec.Sources[3].SpiffeID = "https://example.org/x" }, []string{"not a SPIFFE ID"}},
		{"SPIFFE ID upper-case trust domain", func(p *AccessPolicy) { p.Spec.Sources[3].SpiffeID = "spiffe://Example.org/x" }, []string{"not a SPIFFE ID"}},
		{"SPIFFE ID trailing slash", func(p *AccessPolicy) { p.Spec.Sources[3].SpiffeID = "spiffe://example.org/x/" }, []string{"not a SPIFFE ID"}},
		{"trust domain source", func(p *AccessPolicy) { p.Spec.Sources[3] = Source{TrustDomain: "b.example"} }, nil},
		{"trust domain and namespace", func(p *AccessPolicy) { p.Spec.Sources[2].TrustDomain = "b.example" }, []string{"sources[2]: set exactly one of serviceAccount, namespace, spiffeID or trustDomain (2 set)"}},
		{"trust domain upper case", func(p *AccessPolicy) { p.Spec.Sources[3] = Source{TrustDomain: "B.example"} }, []string{"sources[3].trustDomain", "not a trust domain name"}},
		{"trust domain with scheme", func(p *AccessPolicy) { p.Spec.Sources[3] = Source{TrustDomain: "spiffe://b.example"} }, []string{"sources[3].trustDomain"}},
		{"trust domain too long", func(p *AccessPolicy) { p.Spec.Sources[3] = Source{TrustDomain: strings.Repeat("a", 256)} }, []string{"sources[3].trustDomain"}},
		{"SPIFFE ID dot segment", func(p *AccessPolicy) { p.Spec.Sources[3].SpiffeID = "spiffe://example.org/a/../b" }, []string{"sources[3].spiffeID"}},
		{"several problems at once", func(p *AccessPolicy) {
			p.Spec.Destination.Service = ""
			p.Spec.Sources = nil
		}, []string{"service: required", "at least one source"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := validPolicy()
			tc.mutate(&p)
			err := p.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("Validate() = %v, want ErrInvalidPolicy", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestDeepCopyIndependent(t *testing.T) {
	orig := validPolicy()
	orig.Labels = map[string]string{"team": "shop"}
	c := orig.DeepCopy()
	if !reflect.DeepEqual(&orig, c) {
		t.Fatalf("copy differs:\n%+v\n%+v", orig, *c)
	}
	c.Labels["team"] = "x"
	c.Spec.Destination.Ports[0] = 1
	c.Spec.Sources[0].ServiceAccount.Name = "x"
	c.Spec.Sources[2].Namespace = "x"
	c.Spec.Sources = append(c.Spec.Sources, fromNS("y"))
	if !reflect.DeepEqual(orig, validPolicyWithLabels()) {
		t.Fatalf("changing the copy changed the original: %+v", orig)
	}

	list := &AccessPolicyList{Items: []AccessPolicy{validPolicy()}}
	obj := list.DeepCopyObject()
	lc, ok := obj.(*AccessPolicyList)
	if !ok || !reflect.DeepEqual(list, lc) {
		t.Fatalf("list copy = %#v", obj)
	}
	lc.Items[0].Spec.Sources[0].ServiceAccount.Name = "x"
	if list.Items[0].Spec.Sources[0].ServiceAccount.Name != "frontend" {
		t.Fatal("changing the list copy changed the original")
	}

	var nilP *AccessPolicy
	if nilP.DeepCopy() != nil || nilP.DeepCopyObject() != nil {
		t.Fatal("copy of nil policy is not nil")
	}
	var nilL *AccessPolicyList
	if nilL.DeepCopy() != nil || nilL.DeepCopyObject() != nil {
		t.Fatal("copy of nil list is not nil")
	}
}

func validPolicyWithLabels() AccessPolicy {
	p := validPolicy()
	p.Labels = map[string]string{"team": "shop"}
	return p
}

func TestScheme(t *testing.T) {
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	for obj, kind := range map[runtime.Object]string{&AccessPolicy{}: Kind, &AccessPolicyList{}: "AccessPolicyList"} {
		gvks, _, err := s.ObjectKinds(obj)
		if err != nil || len(gvks) != 1 || gvks[0] != SchemeGroupVersion.WithKind(kind) {
			t.Errorf("ObjectKinds(%T) = %v, %v", obj, gvks, err)
		}
	}
	if !s.Recognizes(SchemeGroupVersion.WithKind("ListOptions")) {
		t.Error("metav1 types not registered in the group version")
	}
	if SchemeGroupVersionResource.String() != "tether.dev/v1alpha1, Resource=accesspolicies" {
		t.Errorf("GVR = %s", SchemeGroupVersionResource)
	}
}

// TestDecodeYAML checks the field names a mesh.yaml author writes.
func TestDecodeYAML(t *testing.T) {
	doc := `
apiVersion: tether.dev/v1alpha1
kind: AccessPolicy
metadata: {name: web-from-frontend, namespace: shop}
spec:
  destination: {service: web, ports: [8080]}
  sources:
    - serviceAccount: {name: frontend}
    - serviceAccount: {name: batch, namespace: jobs}
    - namespace: monitoring
    - spiffeID: spiffe://example.org/vm/billing
`
	var p AccessPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
		t.Fatal(err)
	}
	want := policy("shop", "web-from-frontend", "web", []int32{8080},
		fromSA("frontend", ""), fromSA("batch", "jobs"), fromNS("monitoring"), fromID("spiffe://example.org/vm/billing"))
	want.TypeMeta = metav1.TypeMeta{APIVersion: "tether.dev/v1alpha1", Kind: "AccessPolicy"}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", p, want)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeValidate feeds arbitrary YAML or JSON through decoding,
// Validate, DeepCopy and, for valid policies, NewEngine and Decide: none may
// panic, and a copy must validate like its original.
func FuzzDecodeValidate(f *testing.F) {
	f.Add([]byte(`{"metadata":{"name":"p","namespace":"shop"},"spec":{"destination":{"service":"web","ports":[80]},"sources":[{"namespace":"a"}]}}`))
	f.Add([]byte("metadata: {name: p}\nspec:\n  destination: {service: web}\n  sources:\n  - serviceAccount: {name: fe, namespace: x}\n  - spiffeID: spiffe://example.org/ns/x/sa/y\n"))
	f.Add([]byte(`{"spec":{"sources":[{}, {"serviceAccount":null}, {"spiffeID":"spiffe://"}]}}`))
	f.Add([]byte(`{"spec":{"destination":{"ports":[0,-1,70000,2147483647]}}}`))
	f.Add([]byte(`{"metadata":{"name":"p"},"spec":{"destination":{"service":"web"},"sources":[{"trustDomain":"b.example"},{"spiffeID":"spiffe://b.example/x"},{"trustDomain":"example.org"}]}}`))
	f.Add([]byte("spec: [1, 2]"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		var p AccessPolicy
		if err := yaml.Unmarshal(data, &p); err != nil {
			return
		}
		err := p.Validate()
		if err != nil && !errors.Is(err, ErrInvalidPolicy) {
			t.Fatalf("Validate error does not wrap ErrInvalidPolicy: %v", err)
		}
		if cerr := p.DeepCopy().Validate(); (cerr == nil) != (err == nil) {
			t.Fatalf("copy validates differently: %v vs %v", cerr, err)
		}
		if err != nil {
			return
		}
		e, err := NewEngine(Config{TrustDomain: td, MeshDefault: Deny, Policies: []AccessPolicy{p}})
		if err != nil {
			t.Fatalf("NewEngine rejected a valid policy: %v", err)
		}
		ns := p.Namespace
		if ns == "" {
			ns = "default"
		}
		port := uint16(1)
		if len(p.Spec.Destination.Ports) > 0 {
			port = uint16(p.Spec.Destination.Ports[0])
		}
		// Every source of a valid policy admits a matching identity.
		for _, s := range p.Spec.Sources {
			var src spiffeid.ID
			switch {
			case s.ServiceAccount != nil:
				saNS := s.ServiceAccount.Namespace
				if saNS == "" {
					saNS = ns
				}
				src = sa(saNS, s.ServiceAccount.Name)
			case s.Namespace != "":
				src = sa(s.Namespace, "any")
			case s.TrustDomain != "":
				if s.TrustDomain == td.Name() {
					continue // the own trust domain: matches nothing
				}
				src = spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString(s.TrustDomain), "/any")
			default:
				if src, err = spiffeid.FromString(s.SpiffeID); err != nil {
					t.Fatalf("valid policy holds an unparsable SPIFFE ID %q: %v", s.SpiffeID, err)
				}
				if src.Path() == "" {
					continue // not a workload
				}
			}
			if d := e.Decide(src, ns, p.Spec.Destination.Service, port); !d.Allowed {
				t.Fatalf("source %+v: Decide(%s) = %+v, want allowed", s, src, d)
			}
		}
	})
}
