package kube

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/tether-mesh/tether/pkg/identity"
)

// DefaultReportsName is the ConfigMap the replicas of tether-ca share
// their sidecar reports through.
const DefaultReportsName = "tether-ca-reports"

// reportKeySuffix ends each replica's key in the ConfigMap's binaryData.
const reportKeySuffix = ".json.gz"

// Report exchange timing defaults.
const (
	// DefaultReportMinInterval is the least time between two writes of a
	// replica's reports.
	DefaultReportMinInterval = 2 * time.Second
	// reportGCAfter is how many TTLs after its last write the leader
	// removes a replica's key (the replica is gone).
	reportGCAfter = 10
	// maxReportsConfigMap keeps the ConfigMap under the API server's 1 MiB
	// object limit, with room for metadata.
	maxReportsConfigMap = 900 << 10
	// MaxReportsKubernetes is the report bound of a replica that shares
	// its reports through the ConfigMap: two replicas at their bound fit
	// in it (TestSnapshotSizeBound measures it).
	MaxReportsKubernetes = 4000
)

// ReportSource is a replica's own reports; *identity.CA is one.
type ReportSource interface {
	LocalReports() identity.ReportSnapshot
	LocalReportsChanged() <-chan struct{}
	ReportTTL() time.Duration
}

// ReportExchangeConfig configures a ReportExchange.
type ReportExchangeConfig struct {
	// Client reaches the ConfigMap. The CA's ServiceAccount needs create
	// on configmaps, and get and update on this one, in Namespace.
	Client    corev1client.ConfigMapsGetter
	Namespace string
	// Name of the ConfigMap (default DefaultReportsName).
	Name string
	// Replica is this replica's key (its pod name).
	Replica string
	Reports ReportSource
	// IsLeader says whether this replica removes the keys of replicas that
	// are gone; nil means always.
	IsLeader func() bool
	// MinInterval is the least time between two writes (default
	// DefaultReportMinInterval). Without changes the reports are written
	// again every third of the report TTL, so that readers can tell a live
	// replica from a gone one.
	MinInterval time.Duration
	Logger      *slog.Logger
}

// ReportExchange shares the replicas' sidecar reports through one
// ConfigMap: each replica writes its own snapshot (gzipped JSON) under the
// key <replica>.json.gz, and reads the others' when the rotation gates or
// `tether ca rotate status` need the mesh-wide counts (Peers).
type ReportExchange struct {
	cfg ReportExchangeConfig
	log *slog.Logger
}

// NewReportExchange checks cfg.
func NewReportExchange(cfg ReportExchangeConfig) (*ReportExchange, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("report exchange: no Kubernetes client")
	case cfg.Namespace == "":
		return nil, errors.New("report exchange: no namespace")
	case cfg.Replica == "" || strings.ContainsAny(cfg.Replica, "/\\") || !validKey(cfg.Replica+reportKeySuffix):
		return nil, fmt.Errorf("report exchange: replica name %q cannot name a ConfigMap key (give the pod name)", cfg.Replica)
	case cfg.Reports == nil:
		return nil, errors.New("report exchange: no report source")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultReportsName
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultReportMinInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &ReportExchange{cfg: cfg, log: cfg.Logger}, nil
}

// validKey reports whether k is a valid ConfigMap key.
func validKey(k string) bool {
	if k == "" || len(k) > 253 || k == "." || k == ".." {
		return false
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// Run writes this replica's reports when they change (at most every
// MinInterval) and every third of the report TTL, until ctx ends; the
// leader also removes the keys of replicas gone for 10 TTLs. Failures are
// logged and retried.
func (e *ReportExchange) Run(ctx context.Context) error {
	refresh := e.cfg.Reports.ReportTTL() / 3
	var last time.Time
	for {
		changed := e.cfg.Reports.LocalReportsChanged()
		if wait := time.Until(last.Add(e.cfg.MinInterval)); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		last = time.Now()
		if err := e.publish(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("cannot publish this replica's sidecar reports; the other replicas stop counting them after the report TTL",
				slog.String("configmap", e.cfg.Namespace+"/"+e.cfg.Name), slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(refresh):
		}
	}
}

// publish writes this replica's snapshot, creating the ConfigMap if needed.
func (e *ReportExchange) publish(ctx context.Context) error {
	data, err := encodeSnapshot(e.cfg.Reports.LocalReports())
	if err != nil {
		return err
	}
	key := e.cfg.Replica + reportKeySuffix
	cms := e.cfg.Client.ConfigMaps(e.cfg.Namespace)
	for attempt := 0; ; attempt++ {
		cm, err := cms.Get(ctx, e.cfg.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: e.cfg.Name, Namespace: e.cfg.Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "tether", "app.kubernetes.io/component": "ca"}},
				BinaryData: map[string][]byte{key: data}}
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) && attempt < 5 {
				continue
			}
			return wrapAPI("create", e.cfg.Name, err)
		}
		if err != nil {
			return wrapAPI("get", e.cfg.Name, err)
		}
		if cm.BinaryData == nil {
			cm.BinaryData = map[string][]byte{}
		}
		cm.BinaryData[key] = data
		if e.cfg.IsLeader == nil || e.cfg.IsLeader() {
			e.collect(cm, key)
		}
		if size := configMapSize(cm); size > maxReportsConfigMap {
			return fmt.Errorf("the reports of all replicas take %d bytes, more than the %d a ConfigMap may hold: lower --max-reports", size, maxReportsConfigMap)
		}
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 5 {
			continue // another replica wrote its key
		}
		return wrapAPI("update", e.cfg.Name, err)
	}
}

// collect removes from cm the keys of replicas that have not written for
// reportGCAfter TTLs, and keys that do not decode.
func (e *ReportExchange) collect(cm *corev1.ConfigMap, own string) {
	for k, v := range cm.BinaryData {
		if k == own {
			continue
		}
		s, err := decodeSnapshot(v)
		switch {
		case err != nil:
			e.log.Warn("removing an unreadable replica's reports", slog.String("key", k), slog.Any("error", err))
		case time.Since(s.PublishedAt) > reportGCAfter*max(s.TTL, time.Second):
			e.log.Info("removing the reports of a replica gone since "+s.PublishedAt.UTC().Format(time.RFC3339), slog.String("replica", s.Replica))
		default:
			continue
		}
		delete(cm.BinaryData, k)
	}
}

func configMapSize(cm *corev1.ConfigMap) int {
	n := 0
	for k, v := range cm.BinaryData {
		n += len(k) + len(v)
	}
	return n
}

func wrapAPI(verb, name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s ConfigMap %s: %w", verb, name, err)
}

// Peers returns the snapshots the other replicas published. A ConfigMap
// that does not exist yet holds none; a key that does not decode is an
// error (the gates refuse rather than miss sidecars).
func (e *ReportExchange) Peers(ctx context.Context) ([]identity.ReportSnapshot, error) {
	cm, err := e.cfg.Client.ConfigMaps(e.cfg.Namespace).Get(ctx, e.cfg.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, wrapAPI("get", e.cfg.Name, err)
	}
	own := e.cfg.Replica + reportKeySuffix
	var out []identity.ReportSnapshot
	var errs []error
	keys := make([]string, 0, len(cm.BinaryData))
	for k := range cm.BinaryData {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k == own {
			continue
		}
		s, err := decodeSnapshot(cm.BinaryData[k])
		if err != nil {
			errs = append(errs, fmt.Errorf("ConfigMap %s key %s: %w", e.cfg.Name, k, err))
			continue
		}
		out = append(out, s)
	}
	return out, errors.Join(errs...)
}

// maxSnapshotSize bounds a decompressed snapshot.
const maxSnapshotSize = 64 << 20

func encodeSnapshot(s identity.ReportSnapshot) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(s); err != nil {
		return nil, fmt.Errorf("encode reports: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("encode reports: %w", err)
	}
	return buf.Bytes(), nil
}

func decodeSnapshot(data []byte) (identity.ReportSnapshot, error) {
	var s identity.ReportSnapshot
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return s, fmt.Errorf("reports are not gzip: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, maxSnapshotSize+1))
	if err != nil {
		return s, fmt.Errorf("reports: %w", err)
	}
	if len(raw) > maxSnapshotSize {
		return s, fmt.Errorf("reports decompress to more than %d bytes", maxSnapshotSize)
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return s, fmt.Errorf("reports: %w", err)
	}
	if s.Replica == "" || s.PublishedAt.IsZero() || s.TTL <= 0 {
		return s, errors.New("reports without replica, time or TTL")
	}
	return s, nil
}
