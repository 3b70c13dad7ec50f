package dns

import (
	"slices"
	"strings"
	"testing"
)

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		servers []string
		search  []string
		ndots   int
	}{
		{"kubelet", "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
			[]string{"10.96.0.10"}, []string{"shop.svc.cluster.local", "svc.cluster.local", "cluster.local"}, 5},
		{"defaults", "", nil, nil, 1},
		{"comments and junk", "# hi\n;x\nnameserver not-an-ip\nnameserver ::1 # c\nbogus line\noptions ndots:x ndots:-1\n",
			[]string{"::1"}, nil, 1},
		{"last search wins", "search a.example\ndomain b.example\n", nil, []string{"b.example"}, 1},
		{"ndots capped", "options ndots:99\n", nil, nil, 15},
		{"bad domains skipped", "search Good.Example. a..b\n", nil, []string{"good.example"}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			servers, search, ndots, err := ParseResolvConf(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(servers, tc.servers) || !slices.Equal(search, tc.search) || ndots != tc.ndots {
				t.Fatalf("got %q %q %d, want %q %q %d", servers, search, ndots, tc.servers, tc.search, tc.ndots)
			}
		})
	}
	if _, _, _, err := ParseResolvConf(strings.NewReader(strings.Repeat("x", 5000))); err == nil {
		t.Error("overlong line accepted")
	}
}
