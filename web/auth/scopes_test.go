package auth

import (
	"errors"
	"testing"

	"taskstream/progress/progresstest"
	"taskstream/wire"
)

func TestParseScope(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"publish:*", true},
		{"publish:chat:*", true},
		{"publish:user:*", true},
		{"publish:job:*", true},
		{"publish:chat:lobby", true},
		{"publish:user:u1@x.y", true},
		{"publish:dashboard", true},
		{"history:*", true},
		{"history:job:abc", true},
		{"presence:*", true},
		{"presence:chat:*", true},
		{"presence:chat:lobby", true},
		{"admin:*", true},
		{"", false},
		{"publish", false},
		{"publish:", false},
		{"Publish:*", false},
		{"delete:*", false},
		{"publish:dashboard:*", false},
		{"publish:metrics:*", false},
		{"publish:metrics:x", false},
		{"publish:chat:a.b", false},
		{"publish:chat", false},
		{"publish:job:*:*", false},
		{"publish:*:*", false},
		{"publish:chat:lob*", false},
		{"presence:job:*", false},
		{"presence:user:u1", false},
		{"presence:dashboard", false},
		{"admin:chat:*", false},
		{"admin:", false},
		{"history:* ", false},
	}
	for _, tt := range tests {
		s, err := ParseScope(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseScope(%q) = %+v, %v; want ok=%v", tt.in, s, err, tt.ok)
			continue
		}
		if err != nil && !errors.Is(err, ErrBadScope) {
			t.Errorf("ParseScope(%q) error %v does not wrap ErrBadScope", tt.in, err)
		}
		if err == nil && s.String() != tt.in {
			t.Errorf("ParseScope(%q).String() = %q", tt.in, s.String())
		}
	}
}

func TestScopesAllow(t *testing.T) {
	mustScopes := func(strs ...string) Scopes {
		ss, err := ParseScopes(strs)
		if err != nil {
			t.Fatal(err)
		}
		return ss
	}
	bench := mustScopes("publish:chat:*", "publish:user:*", "history:*", "presence:chat:lobby", "publish:chat:*")
	if len(bench) != 4 {
		t.Errorf("duplicates kept: %v", bench.Strings())
	}
	tests := []struct {
		action string
		group  wire.Group
		want   bool
	}{
		{ActionPublish, wire.ChatGroup("lobby"), true},
		{ActionPublish, wire.UserGroup("u1"), true},
		{ActionPublish, wire.JobGroup("j1"), false},
		{ActionPublish, wire.DashboardGroup(), false},
		{ActionHistory, wire.JobGroup("j1"), true},
		{ActionHistory, wire.DashboardGroup(), true},
		{ActionPresence, wire.ChatGroup("lobby"), true},
		{ActionPresence, wire.ChatGroup("lobby2"), false},
		{ActionAdmin, wire.ChatGroup("lobby"), false},
	}
	for _, tt := range tests {
		if got := bench.Allow(tt.action, tt.group); got != tt.want {
			t.Errorf("Allow(%s, %s) = %v, want %v", tt.action, tt.group, got, tt.want)
		}
	}
	if !mustScopes("publish:dashboard").Allow(ActionPublish, wire.DashboardGroup()) {
		t.Error("an exact dashboard scope does not allow the dashboard")
	}
	if mustScopes("history:user:u1").Allow(ActionHistory, wire.UserGroup("u10")) {
		t.Error("an exact group scope allows another group with its name as a prefix")
	}
	if _, err := ParseScopes(make([]string, MaxScopes+1)); !errors.Is(err, ErrBadScope) {
		t.Errorf("%d scopes: %v", MaxScopes+1, err)
	}
}

// Stored tokens come back with their scopes; an admin's token has admin
// rights only with admin:*; a stored scope that no longer parses refuses
// the token rather than leaving it without scopes (acting as its user).
func TestScopedTokensStored(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newTestStore(t, srv, Config{AdminTokens: []string{"adm"}})
		ctx := t.Context()
		admin, err := s.Bearer(ctx, "adm")
		if err != nil || !admin.Admin {
			t.Fatalf("the configured admin token: %+v %v", admin, err)
		}
		user := Principal{User: User{ID: "u1", Name: "one"}}
		if err := s.saveUser(ctx, user.User, 0); err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			owner  Principal
			scopes []string
			err    error
		}{
			{user, []string{"publish:chat:*"}, ErrAdminScope},
			{user, []string{"admin:*"}, ErrAdminScope},
			{user, []string{"history:nope:*"}, ErrBadScope},
			{admin, nil, ErrScopesRequired},
			{Principal{User: User{ID: "g1", Guest: true}}, []string{"history:*"}, ErrSignInRequired},
		} {
			if _, err := s.CreateToken(ctx, tt.owner, TokenRequest{Scopes: tt.scopes}); !errors.Is(err, tt.err) {
				t.Errorf("%s mints %v: %v, want %v", tt.owner.User.ID, tt.scopes, err, tt.err)
			}
		}
		for _, tt := range []struct {
			owner      Principal
			scopes     []string
			user       string
			admin      bool
			adminOwned bool
		}{
			{user, nil, "u1", false, false},
			{user, []string{"history:*"}, "u1", false, false},
			{admin, []string{"publish:chat:*", "history:*"}, AdminUserID, false, true},
			{admin, []string{"admin:*"}, AdminUserID, true, true},
		} {
			tok, err := s.CreateToken(ctx, tt.owner, TokenRequest{Name: "n", Scopes: tt.scopes})
			if err != nil {
				t.Fatal(err)
			}
			p, err := s.Bearer(ctx, tok.Token)
			if err != nil || p.User.ID != tt.user || p.Admin != tt.admin || p.AdminOwned != tt.adminOwned || len(p.Scopes) != len(tt.scopes) || p.TokenID != tok.ID {
				t.Errorf("token with %v: %+v %v", tt.scopes, p, err)
			}
			if ok, err := s.Valid(ctx, p); !ok || err != nil {
				t.Errorf("token with %v is not valid: %v", tt.scopes, err)
			}
			if err := s.RevokeToken(ctx, tt.user, tok.ID); err != nil {
				t.Fatal(err)
			}
			if ok, _ := s.Valid(ctx, p); ok {
				t.Errorf("revoked token with %v is still valid", tt.scopes)
			}
			if _, err := s.Bearer(ctx, tok.Token); !errors.Is(err, ErrBadToken) {
				t.Errorf("revoked token with %v: %v", tt.scopes, err)
			}
		}
		tok, err := s.CreateToken(ctx, user, TokenRequest{Scopes: []string{"history:chat:*"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.rdb.HSet(ctx, s.key("token", hashSecret(tok.Token)), "scopes", "history:chat:* shout:*").Err(); err != nil {
			t.Fatal(err)
		}
		if p, err := s.Bearer(ctx, tok.Token); !errors.Is(err, ErrBadToken) {
			t.Errorf("a token with a stored scope that does not parse: %+v %v, want ErrBadToken", p, err)
		}
	})
}
