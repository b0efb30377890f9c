package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/wiremesh/wiremesh/cli"
)

// The admin commands, as a table. Every one has the same shape: parse its
// flags (which embed AdminFlags), check its positional arguments, build a
// request, send it to the admin socket, print the answer. An entry says
// only what differs.

// adminCommand is one admin command, "group verb".
type adminCommand interface {
	name() string
	run(ctx context.Context, args []string, stdout io.Writer) error
}

// stateDirFlag is what every admin flag struct has, by embedding AdminFlags.
type stateDirFlag interface{ stateDir() string }

func (f *AdminFlags) stateDir() string { return f.StateDir }

// admin describes a command whose flags are F and whose answer decodes
// into O.
type admin[F any, O any] struct {
	cmd   string // "nodes delete"
	usage string // after "coordinator <cmd> "
	// args is the exact number of positional arguments; argsErr is the
	// usage error for another number (nil: "takes no arguments").
	args    int
	argsErr string
	// request returns the admin call to make. An error here is the
	// command's own (usage) error, returned before the socket is dialled.
	request func(f *F, pos []string) (method, path string, body any, err error)
	// wrap, when set, wraps an error from the admin socket.
	wrap  func(error) error
	print func(w io.Writer, f *F, pos []string, out *O) error
}

func (c *admin[F, O]) name() string { return c.cmd }

func (c *admin[F, O]) run(ctx context.Context, args []string, stdout io.Writer) error {
	name := "coordinator " + c.cmd
	var f F
	pos, err := cli.Parse(name, envPrefix, name+" "+c.usage, &f, args, stdout)
	if err != nil {
		if errors.Is(err, cli.ErrHelp) {
			return err
		}
		return usageErr("%v", err)
	}
	if len(pos) != c.args {
		if c.argsErr == "" {
			return usageErr("%s takes no arguments, got %q", name, pos[0])
		}
		return usageErr("%s", c.argsErr)
	}
	method, path, body, err := c.request(&f, pos)
	if err != nil {
		return err
	}
	hc, err := adminClient(any(&f).(stateDirFlag).stateDir())
	if err != nil {
		return err
	}
	var out O
	if err := adminCall(ctx, hc, method, path, body, &out); err != nil {
		if c.wrap != nil {
			return c.wrap(err)
		}
		return err
	}
	return c.print(stdout, &f, pos, &out)
}

// Flag sets shared by several commands.
type (
	plainFlags struct{ AdminFlags }
	jsonFlags  struct {
		AdminFlags
		JSON bool `flag:"json" env:"JSON" help:"print JSON"`
	}
	authKeyFlags struct {
		AdminFlags
		Reusable  bool     `flag:"reusable" env:"REUSABLE" help:"the key may register any number of nodes"`
		Ephemeral bool     `flag:"ephemeral" env:"EPHEMERAL" help:"nodes registered with it are deleted once offline"`
		Tags      []string `flag:"tags" env:"TAGS" help:"tags given to nodes registered with it"`
		Expiry    string   `flag:"expiry" env:"EXPIRY" help:"the key stops working after this duration (default: never)"`
		User      string   `flag:"user" env:"USER" help:"user who owns the nodes registered with it (default admin@; none for a tagged key)"`
	}
	forceFlags struct {
		AdminFlags
		Force bool `flag:"force" env:"FORCE" help:"also delete the user's nodes"`
	}
	relayKeyFlags struct {
		AdminFlags
		Region     string `flag:"region" env:"REGION" help:"region code, a short DNS label (nyc)"`
		RegionName string `flag:"region-name" env:"REGION_NAME" help:"human-readable region name"`
		Expiry     string `flag:"expiry" env:"EXPIRY" help:"the key stops working after this duration (default 720h; 0: never)"`
	}
	webLoginFlags struct {
		AdminFlags
		User string `flag:"user" env:"USER" help:"sign in as this user, who sees and manages only their own machines and keys (default: an admin)"`
	}
)

// noBody is the answer of commands that print no data from it.
type noBody struct{}

func printKey(w io.Writer, k *KeyResponse) error {
	_, err := fmt.Fprintln(w, k.Key)
	return err
}

func printJSON(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

// nodeCommand is `nodes delete` or `nodes expire`.
func nodeCommand(verb, path string) adminCommand {
	return &admin[plainFlags, noBody]{
		cmd: "nodes " + verb, usage: "NAME --state-dir DIR", args: 1, argsErr: "nodes " + verb + " needs exactly one node NAME",
		request: func(_ *plainFlags, pos []string) (string, string, any, error) {
			return "POST", path, NameRequest{Name: pos[0]}, nil
		},
		print: func(w io.Writer, _ *plainFlags, pos []string, _ *noBody) error {
			_, err := fmt.Fprintf(w, "%s: done\n", pos[0])
			return err
		},
	}
}

// adminCommands is every admin command.
var adminCommands = []adminCommand{
	&admin[authKeyFlags, KeyResponse]{
		cmd: "authkey create", usage: "[--user NAME] [--reusable] [--ephemeral] [--tags tag:a,tag:b] [--expiry 24h] --state-dir DIR",
		request: func(f *authKeyFlags, _ []string) (string, string, any, error) {
			return "POST", AdminPathAuthKey, AuthKeyRequest{Reusable: f.Reusable, Ephemeral: f.Ephemeral, Tags: f.Tags, Expiry: f.Expiry, User: f.User}, nil
		},
		print: func(w io.Writer, _ *authKeyFlags, _ []string, k *KeyResponse) error { return printKey(w, k) },
	},
	&admin[jsonFlags, []AuthKeyInfo]{
		cmd: "authkey list", usage: "[--json] --state-dir DIR",
		request: func(*jsonFlags, []string) (string, string, any, error) { return "GET", AdminPathAuthKeys, nil, nil },
		print: func(w io.Writer, f *jsonFlags, _ []string, keys *[]AuthKeyInfo) error {
			if f.JSON {
				return printJSON(w, *keys)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tUSER\tTAGS\tREUSABLE\tEPHEMERAL\tEXPIRES\tUSES\tSTATE")
			for _, k := range *keys {
				state := "valid"
				switch {
				case !k.Revoked.IsZero():
					state = "revoked " + fmtTime(k.Revoked)
				case k.Expired:
					state = "expired"
				case !k.Reusable && k.Uses > 0:
					state = "used"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%v\t%v\t%s\t%d\t%s\n", k.ID, dash(k.User), dash(strings.Join(k.Tags, ",")),
					k.Reusable, k.Ephemeral, fmtTime(k.Expires), k.Uses, state)
			}
			return tw.Flush()
		},
	},
	&admin[plainFlags, noBody]{
		cmd: "authkey revoke", usage: "ID --state-dir DIR", args: 1, argsErr: "authkey revoke needs exactly one key ID (see authkey list)",
		request: func(_ *plainFlags, pos []string) (string, string, any, error) {
			id, err := strconv.ParseInt(pos[0], 10, 64)
			if err != nil || id <= 0 {
				return "", "", nil, usageErr("authkey revoke: %q is not a key ID (a number from authkey list)", pos[0])
			}
			return "POST", AdminPathRevoke, IDRequest{ID: id}, nil
		},
		print: func(w io.Writer, _ *plainFlags, pos []string, _ *noBody) error {
			_, err := fmt.Fprintf(w, "auth key %s revoked\n", pos[0])
			return err
		},
	},
	&admin[plainFlags, noBody]{
		cmd: "users create", usage: "NAME --state-dir DIR", args: 1, argsErr: "users create needs exactly one user NAME (alice@example.com)",
		request: func(_ *plainFlags, pos []string) (string, string, any, error) {
			return "POST", AdminPathUsers, UserRequest{Name: pos[0]}, nil
		},
		print: func(w io.Writer, _ *plainFlags, pos []string, _ *noBody) error {
			_, err := fmt.Fprintf(w, "user %s created\n", pos[0])
			return err
		},
	},
	&admin[forceFlags, struct {
		NodesDeleted int `json:"nodes_deleted"`
	}]{
		cmd: "users delete", usage: "NAME [--force] --state-dir DIR", args: 1, argsErr: "users delete needs exactly one user NAME (alice@example.com)",
		request: func(f *forceFlags, pos []string) (string, string, any, error) {
			return "POST", AdminPathUserDelete, UserRequest{Name: pos[0], Force: f.Force}, nil
		},
		print: func(w io.Writer, _ *forceFlags, pos []string, out *struct {
			NodesDeleted int `json:"nodes_deleted"`
		}) error {
			_, err := fmt.Fprintf(w, "user %s deleted (%d nodes deleted)\n", pos[0], out.NodesDeleted)
			return err
		},
	},
	&admin[jsonFlags, []UserInfo]{
		cmd: "users list", usage: "[--json] --state-dir DIR",
		request: func(*jsonFlags, []string) (string, string, any, error) { return "GET", AdminPathUsers, nil, nil },
		print: func(w io.Writer, f *jsonFlags, _ []string, users *[]UserInfo) error {
			if f.JSON {
				return printJSON(w, *users)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tNODES\tCREATED")
			for _, u := range *users {
				created := fmtTime(u.Created)
				if u.BuiltIn {
					created = "(built in)"
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\n", u.Name, u.Nodes, created)
			}
			return tw.Flush()
		},
	},
	&admin[relayKeyFlags, KeyResponse]{
		cmd: "relaykey create", usage: "--region CODE [--region-name NAME] [--expiry 720h] --state-dir DIR",
		request: func(f *relayKeyFlags, _ []string) (string, string, any, error) {
			if f.Region == "" {
				return "", "", nil, usageErr("relaykey create needs --region")
			}
			return "POST", AdminPathRelayKey, RelayKeyRequest{Region: f.Region, RegionName: f.RegionName, Expiry: f.Expiry}, nil
		},
		print: func(w io.Writer, _ *relayKeyFlags, _ []string, k *KeyResponse) error { return printKey(w, k) },
	},
	&admin[jsonFlags, []JoinKeyInfo]{
		cmd: "relaykey list", usage: "[--json] --state-dir DIR",
		request: func(*jsonFlags, []string) (string, string, any, error) { return "GET", AdminPathRelayKeys, nil, nil },
		print: func(w io.Writer, f *jsonFlags, _ []string, keys *[]JoinKeyInfo) error {
			if f.JSON {
				return printJSON(w, *keys)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tREGION\tCREATED\tEXPIRES\tSTATE")
			for _, k := range *keys {
				state := "valid"
				switch {
				case k.Revoked:
					state = "revoked"
				case k.Expired:
					state = "expired"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", k.ID, k.Region, fmtTime(k.Created), fmtTime(k.Expires), state)
			}
			return tw.Flush()
		},
	},
	&admin[plainFlags, noBody]{
		cmd: "relaykey revoke", usage: "ID --state-dir DIR", args: 1, argsErr: "relaykey revoke needs exactly one key ID (see relaykey list)",
		request: func(_ *plainFlags, pos []string) (string, string, any, error) {
			id, err := strconv.ParseInt(pos[0], 10, 64)
			if err != nil || id <= 0 {
				return "", "", nil, usageErr("relaykey revoke: %q is not a key ID (see relaykey list)", pos[0])
			}
			return "POST", AdminPathRelayKeyRevoke, IDRequest{ID: id}, nil
		},
		print: func(w io.Writer, _ *plainFlags, pos []string, _ *noBody) error {
			_, err := fmt.Fprintf(w, "join key %s: revoked\n", pos[0])
			return err
		},
	},
	&admin[jsonFlags, []NodeInfo]{
		cmd: "nodes list", usage: "[--json] --state-dir DIR",
		request: func(*jsonFlags, []string) (string, string, any, error) { return "GET", AdminPathNodes, nil, nil },
		print: func(w io.Writer, f *jsonFlags, _ []string, nodes *[]NodeInfo) error {
			if f.JSON {
				return printJSON(w, *nodes)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tUSER\tIP\tONLINE\tLAST SEEN\tTAGS\tKEY EXPIRY\tHOME RELAY")
			for _, n := range *nodes {
				exp := fmtTime(n.KeyExpiry)
				if n.Expired {
					exp += " (expired)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s\n", n.Name, dash(n.User), n.IP, n.Online, fmtTime(n.LastSeen),
					dash(strings.Join(n.Tags, ",")), exp, dash(n.HomeRelay))
			}
			return tw.Flush()
		},
	},
	nodeCommand("delete", AdminPathDelete),
	nodeCommand("expire", AdminPathExpire),
	&admin[jsonFlags, []RelayInfo]{
		cmd: "relays list", usage: "[--json] --state-dir DIR",
		request: func(*jsonFlags, []string) (string, string, any, error) { return "GET", AdminPathRelays, nil, nil },
		print: func(w io.Writer, f *jsonFlags, _ []string, relays *[]RelayInfo) error {
			if f.JSON {
				return printJSON(w, *relays)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tREGION\tADDR\tSTATE\tCLIENTS\tLAST HEARTBEAT")
			for _, r := range *relays {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", r.Name, r.Region, r.Addr, r.State, r.Clients, fmtTime(r.LastHeartbeat))
			}
			return tw.Flush()
		},
	},
	&admin[plainFlags, []byte]{
		cmd: "policy get", usage: "--state-dir DIR",
		request: func(*plainFlags, []string) (string, string, any, error) { return "GET", AdminPathPolicy, nil, nil },
		print: func(w io.Writer, _ *plainFlags, _ []string, text *[]byte) error {
			if len(*text) == 0 {
				_, err := fmt.Fprintln(w, "// no policy set: every node may reach every other node")
				return err
			}
			w.Write(*text)
			if !bytes.HasSuffix(*text, []byte("\n")) {
				fmt.Fprintln(w)
			}
			return nil
		},
	},
	&admin[plainFlags, noBody]{
		cmd: "policy set", usage: "FILE --state-dir DIR", args: 1, argsErr: "policy set needs exactly one FILE",
		request: func(_ *plainFlags, pos []string) (string, string, any, error) {
			text, err := os.ReadFile(pos[0])
			if err != nil {
				return "", "", nil, fmt.Errorf("policy set: %w", err)
			}
			return "PUT", AdminPathPolicy, text, nil
		},
		wrap: func(err error) error { return fmt.Errorf("policy rejected, the old one stays in force: %w", err) },
		print: func(w io.Writer, _ *plainFlags, _ []string, _ *noBody) error {
			_, err := fmt.Fprintln(w, "policy set")
			return err
		},
	},
	&admin[webLoginFlags, WebLoginResponse]{
		cmd: "web login", usage: "[--user NAME] --state-dir DIR",
		request: func(f *webLoginFlags, _ []string) (string, string, any, error) {
			return "POST", AdminPathWebLogin, WebLoginRequest{User: f.User}, nil
		},
		print: func(w io.Writer, _ *webLoginFlags, _ []string, out *WebLoginResponse) error {
			_, err := fmt.Fprintf(w, "Open this link in a browser within 10 minutes; it signs in once:\n%s\n", out.URL)
			return err
		},
	},
	dnsGetCommand(),
	dnsSetCommand(),
	routesListCommand(),
	routeApproveCommand("approve", AdminPathRouteApprove),
	routeApproveCommand("unapprove", AdminPathRouteUnapprove),
}

// runAdmin runs the admin command cmd ("group verb").
func runAdmin(ctx context.Context, cmd string, args []string, stdout io.Writer) error {
	for _, c := range adminCommands {
		if c.name() == cmd {
			return c.run(ctx, args, stdout)
		}
	}
	return usageErr("unknown command %q", cmd)
}
