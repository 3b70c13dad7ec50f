package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// lookup resolves NAME the way a pod does (the resolv.conf search list and
// ndots) and tells NXDOMAIN apart from every other failure, which Go's
// resolver does not (it reports a name without addresses as "no such host"
// too): "NXDOMAIN" and exit code 3 only when every name of the search list
// got NXDOMAIN.
func lookup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("lookup", stderr)
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "resolver configuration: nameservers, search list, ndots")
	server := fs.String("server", "", "ask this server (IP:PORT) instead of resolv.conf's nameservers")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout of each query")
	qtype := fs.String("type", "A,AAAA", "record types to ask for: A, AAAA or A,AAAA (NXDOMAIN only if every one says so)")
	rest, err := parse(fs, args, 1, "one NAME")
	if err != nil {
		return err
	}
	name := rest[0]
	if _, ok := dns.IsDomainName(name); !ok || strings.Trim(name, ".") == "" {
		return fmt.Errorf("%w: %q is not a domain name", errUsage, name)
	}
	var qtypes []uint16
	switch *qtype {
	case "A":
		qtypes = []uint16{dns.TypeA}
	case "AAAA":
		qtypes = []uint16{dns.TypeAAAA}
	case "A,AAAA", "AAAA,A":
		qtypes = []uint16{dns.TypeA, dns.TypeAAAA}
	default:
		return fmt.Errorf("%w: --type %q: want A, AAAA or A,AAAA", errUsage, *qtype)
	}
	conf, err := dns.ClientConfigFromFile(*resolvConf)
	if err != nil {
		return fmt.Errorf("reading %s: %w", *resolvConf, err)
	}
	servers := make([]string, 0, len(conf.Servers))
	for _, s := range conf.Servers {
		servers = append(servers, net.JoinHostPort(s, conf.Port))
	}
	if *server != "" {
		if _, _, err := net.SplitHostPort(*server); err != nil {
			return fmt.Errorf("%w: --server %q: %v", errUsage, *server, err)
		}
		servers = []string{*server}
	}
	if len(servers) == 0 {
		return fmt.Errorf("%s names no nameserver", *resolvConf)
	}
	r := resolver{servers: servers, qtypes: qtypes, client: &dns.Client{Timeout: *timeout}}
	addrs, err := r.resolve(ctx, conf.NameList(name))
	if errors.Is(err, errNXDomain) {
		fmt.Fprintln(stdout, "NXDOMAIN")
		return &exitError{code: exitNXDomain, err: fmt.Errorf("%s: %w", name, err)}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, a := range addrs {
		fmt.Fprintln(stdout, a)
	}
	return nil
}

var errNXDomain = errors.New("NXDOMAIN: no such domain")

type resolver struct {
	servers []string
	qtypes  []uint16 // asked for each name
	client  *dns.Client
}

// resolve tries each candidate name in turn and returns the addresses of
// the first that has any. It returns errNXDomain only if every candidate
// got NXDOMAIN; any other answer (SERVFAIL, a timeout, a name without
// addresses) is reported as such.
func (r resolver) resolve(ctx context.Context, names []string) ([]string, error) {
	var errs []error
	for _, n := range names {
		addrs, err := r.resolveName(ctx, n)
		if err == nil {
			return addrs, nil
		}
		if !errors.Is(err, errNXDomain) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return nil, errNXDomain
	}
	return nil, errors.Join(errs...)
}

// resolveName asks for the records of r.qtypes of one fully qualified name.
// The name is NXDOMAIN only if every answer says so; otherwise the error
// tells what each answer was.
func (r resolver) resolveName(ctx context.Context, name string) ([]string, error) {
	var addrs, answers []string
	nx := 0
	for _, qtype := range r.qtypes {
		in, err := r.exchange(ctx, name, qtype)
		if err != nil {
			return nil, err
		}
		n := 0
		for _, rr := range in.Answer {
			switch rr := rr.(type) {
			case *dns.A:
				addrs = append(addrs, rr.A.String())
				n++
			case *dns.AAAA:
				addrs = append(addrs, rr.AAAA.String())
				n++
			}
		}
		answers = append(answers, fmt.Sprintf("%s: %s with %d addresses", dns.TypeToString[qtype], dns.RcodeToString[in.Rcode], n))
		switch in.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNameError:
			nx++
		default:
			return nil, fmt.Errorf("%s %s: %s", name, dns.TypeToString[qtype], dns.RcodeToString[in.Rcode])
		}
	}
	switch {
	case nx == len(r.qtypes):
		return nil, fmt.Errorf("%s: %w", name, errNXDomain)
	case nx > 0:
		// One type says the name does not exist, the other that it does.
		return nil, fmt.Errorf("%s: inconsistent answers (%s)", name, strings.Join(answers, "; "))
	case len(addrs) > 0:
		return addrs, nil
	default:
		return nil, fmt.Errorf("%s: the name exists but has no addresses (%s)", name, strings.Join(answers, "; "))
	}
}

// exchange asks each server in turn until one answers.
func (r resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	var errs []error
	for _, s := range r.servers {
		in, _, err := r.client.ExchangeContext(ctx, m, s)
		if err == nil && in.Truncated {
			tcp := *r.client
			tcp.Net = "tcp"
			in, _, err = tcp.ExchangeContext(ctx, m, s)
		}
		if err == nil {
			return in, nil
		}
		errs = append(errs, fmt.Errorf("asking %s for %s %s: %w", s, name, dns.TypeToString[qtype], err))
	}
	return nil, errors.Join(errs...)
}
