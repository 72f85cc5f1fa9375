// Command ollama_render renders a Modelfile TEMPLATE the way Ollama's /api/chat does, for
// tests/export/test_modelfile_ollama.py. It mirrors, from Ollama's source (template/template.go, api/types.go,
// thinking/template.go, tools/template.go): the functions Ollama registers on its templates, the values it passes
// (messages collated, tools and tool-call arguments as JSON-printing maps, Think and IsThinkSet), and the two
// heuristics that read a template's structure: where thinking is wrapped (Ollama's "thinking" capability and the
// tags its output parser splits on) and the tag that starts a tool call. Standard library only; Go >= 1.22.
//
//	ollama_render TEMPLATE_FILE < request.json
//
// request.json holds /api/chat fields, {"messages": [...], "tools": [...], "think": true | false | null}, and the
// Modelfile's SYSTEM as "system".
// stdout: {"prompt": ..., "vars": [...], "thinking_tags": [open, close], "tool_call_tag": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// Request fields, as api.ChatRequest / api.Message / api.Tool decode them, plus the Modelfile's SYSTEM.
type Request struct {
	Messages []Message `json:"messages"`
	Tools    []Tool    `json:"tools"`
	Think    *bool     `json:"think"`
	System   string    `json:"system"`
}

type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

type ToolCall struct {
	ID       string `json:"id,omitempty"`
	Function struct {
		Index     int            `json:"index"`
		Name      string         `json:"name"`
		Arguments map[string]any `json:"arguments"`
	} `json:"function"`
}

type Tool struct {
	Type     string `json:"type"`
	Items    any    `json:"items,omitempty"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
		Parameters  struct {
			Type       string                  `json:"type"`
			Defs       any                     `json:"$defs,omitempty"`
			Items      any                     `json:"items,omitempty"`
			Required   []string                `json:"required,omitempty"`
			Properties map[string]ToolProperty `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

type ToolProperty struct {
	AnyOf       []ToolProperty          `json:"anyOf,omitempty"`
	Type        PropertyType            `json:"type,omitempty"`
	Items       any                     `json:"items,omitempty"`
	Description string                  `json:"description,omitempty"`
	Enum        []any                   `json:"enum,omitempty"`
	Properties  map[string]ToolProperty `json:"properties,omitempty"`
	Required    []string                `json:"required,omitempty"`
}

// PropertyType is "string" or ["string", "null"] in JSON.
type PropertyType []string

func (p *PropertyType) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*p = PropertyType{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(p))
}

func (p PropertyType) MarshalJSON() ([]byte, error) {
	if len(p) == 1 {
		return json.Marshal(p[0])
	}
	return json.Marshal([]string(p))
}

// What a template sees: Ollama converts messages and tools to these before executing it.
type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

type templateToolCall struct {
	ID       string
	Function struct {
		Index     int
		Name      string
		Arguments jsonMap
	}
}

// jsonMap prints as compact JSON with sorted keys ({{ .Function.Arguments }}), "{}" when nil.
type jsonMap map[string]any

func (m jsonMap) String() string {
	if m == nil {
		return "{}"
	}
	b, _ := json.Marshal(map[string]any(m))
	return string(b)
}

type templateTool struct {
	Type     string `json:"type"`
	Items    any    `json:"items,omitempty"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description"`
		Parameters  struct {
			Type       string                  `json:"type"`
			Defs       any                     `json:"$defs,omitempty"`
			Items      any                     `json:"items,omitempty"`
			Required   []string                `json:"required,omitempty"`
			Properties map[string]ToolProperty `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

func (t templateTool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":   func(...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func(...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
}

// collate: every system message also goes into .System (joined by blank lines); consecutive messages of one role,
// tool results excepted, are merged into one.
func collate(msgs []Message) (string, []*templateMessage) {
	var system []string
	var out []*templateMessage
	for _, m := range msgs {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(out); n > 0 && out[n-1].Role == m.Role && m.Role != "tool" {
			out[n-1].Content += "\n\n" + m.Content
			continue
		}
		tm := &templateMessage{Role: m.Role, Content: m.Content, Thinking: m.Thinking, ToolName: m.ToolName,
			ToolCallID: m.ToolCallID}
		for _, c := range m.ToolCalls {
			var tc templateToolCall
			tc.ID, tc.Function.Index, tc.Function.Name = c.ID, c.Function.Index, c.Function.Name
			tc.Function.Arguments = jsonMap(c.Function.Arguments)
			tm.ToolCalls = append(tm.ToolCalls, tc)
		}
		out = append(out, tm)
	}
	return strings.Join(system, "\n\n"), out
}

func convertTools(tools []Tool) []templateTool {
	if tools == nil {
		return nil
	}
	out := make([]templateTool, len(tools))
	for i, t := range tools {
		out[i].Type, out[i].Items = t.Type, t.Items
		out[i].Function.Name, out[i].Function.Description = t.Function.Name, t.Function.Description
		p := t.Function.Parameters
		out[i].Function.Parameters.Type, out[i].Function.Parameters.Defs = p.Type, p.Defs
		out[i].Function.Parameters.Items, out[i].Function.Parameters.Required = p.Items, p.Required
		out[i].Function.Parameters.Properties = p.Properties
	}
	return out
}

// children in the order Ollama's walkers visit them: a branch's pipeline, then its list, then its else list.
func children(n parse.Node) []parse.Node {
	var out []parse.Node
	branch := func(b *parse.BranchNode) {
		out = append(out, b.Pipe, b.List)
		if b.ElseList != nil {
			out = append(out, b.ElseList)
		}
	}
	switch x := n.(type) {
	case *parse.ListNode:
		out = append(out, x.Nodes...)
	case *parse.IfNode:
		branch(&x.BranchNode)
	case *parse.RangeNode:
		branch(&x.BranchNode)
	case *parse.WithNode:
		branch(&x.BranchNode)
	case *parse.ActionNode:
		out = append(out, x.Pipe)
	case *parse.TemplateNode:
		if x.Pipe != nil {
			out = append(out, x.Pipe)
		}
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			out = append(out, c)
		}
	case *parse.CommandNode:
		out = append(out, x.Args...)
	}
	return out
}

// vars: the field and variable names a template uses, lower-cased. Ollama executes a template with .Messages only
// when "messages" is among them, and gives the model the tools capability when "tools" is.
func vars(t *template.Template) []string {
	set := map[string]bool{}
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		switch x := n.(type) {
		case *parse.FieldNode:
			for _, id := range x.Ident {
				set[strings.ToLower(id)] = true
			}
		case *parse.VariableNode:
			for _, id := range x.Ident {
				set[strings.ToLower(id)] = true
			}
		}
		for _, c := range children(n) {
			walk(c)
		}
	}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			walk(tt.Root)
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// thinkingTags: for each {{ .Thinking }} inside a range over .Messages, the first and last text of the nearest
// enclosing list, trimmed; the last such reference wins. Both found = Ollama's thinking capability, and the tags
// it splits generated text on.
func thinkingTags(root parse.Node) (string, string) {
	var open, closing string
	var stack []parse.Node
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		stack = append(stack, n)
		if f, ok := n.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == "Thinking" && inMessagesRange(stack) {
			for i := len(stack) - 1; i >= 0; i-- {
				if l, ok := stack[i].(*parse.ListNode); ok {
					if t, ok := l.Nodes[0].(*parse.TextNode); ok {
						open = strings.TrimSpace(string(t.Text))
					}
					if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
						closing = strings.TrimSpace(string(t.Text))
					}
					break
				}
			}
		}
		for _, c := range children(n) {
			walk(c)
		}
		stack = stack[:len(stack)-1]
	}
	walk(root)
	return open, closing
}

func inMessagesRange(stack []parse.Node) bool {
	for i := len(stack) - 1; i >= 0; i-- {
		if r, ok := stack[i].(*parse.RangeNode); ok {
			return usesField(r.Pipe, "Messages")
		}
	}
	return false
}

func usesField(n parse.Node, name string) bool {
	if f, ok := n.(*parse.FieldNode); ok && f.Ident[0] == name {
		return true
	}
	for _, c := range children(n) {
		if usesField(c, name) {
			return true
		}
	}
	return false
}

// toolCallTag: the first non-blank text (up to any "{") inside the first {{ if }} on .ToolCalls; "{" when there is
// none, and Ollama then takes any JSON object in the output for a tool call.
func toolCallTag(root *parse.ListNode) string {
	node := findToolCallsIf(root.Nodes)
	if node == nil {
		return "{"
	}
	text := firstText(node.List.Nodes)
	if text == nil {
		return "{"
	}
	tag, _, _ := strings.Cut(string(text.Text), "{")
	if tag = strings.TrimSpace(tag); tag != "" {
		return tag
	}
	return "{"
}

func findToolCallsIf(nodes []parse.Node) *parse.IfNode {
	for _, n := range nodes {
		var lists []*parse.ListNode
		switch x := n.(type) {
		case *parse.IfNode:
			for _, c := range x.Pipe.Cmds {
				for _, a := range c.Args {
					if f, ok := a.(*parse.FieldNode); ok && slices.Contains(f.Ident, "ToolCalls") {
						return x
					}
				}
			}
			lists = []*parse.ListNode{x.List, x.ElseList}
		case *parse.RangeNode:
			lists = []*parse.ListNode{x.List, x.ElseList}
		case *parse.WithNode:
			lists = []*parse.ListNode{x.List, x.ElseList}
		case *parse.ListNode:
			lists = []*parse.ListNode{x}
		}
		for _, l := range lists {
			if l != nil {
				if found := findToolCallsIf(l.Nodes); found != nil {
					return found
				}
			}
		}
	}
	return nil
}

// firstText stops at the first action, and searches only the first if/range/with it meets.
func firstText(nodes []parse.Node) *parse.TextNode {
	for _, n := range nodes {
		var lists []*parse.ListNode
		switch x := n.(type) {
		case *parse.TextNode:
			if strings.TrimSpace(string(x.Text)) != "" {
				return x
			}
			continue
		case *parse.ActionNode:
			return nil
		case *parse.ListNode:
			if t := firstText(x.Nodes); t != nil {
				return t
			}
			continue
		case *parse.IfNode:
			lists = []*parse.ListNode{x.List, x.ElseList}
		case *parse.RangeNode:
			lists = []*parse.ListNode{x.List, x.ElseList}
		case *parse.WithNode:
			lists = []*parse.ListNode{x.List, x.ElseList}
		default:
			continue
		}
		for _, l := range lists {
			if l != nil {
				if t := firstText(l.Nodes); t != nil {
					return t
				}
			}
		}
		return nil
	}
	return nil
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: ollama_render TEMPLATE_FILE < request.json")
	}
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	var req Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(string(text))
	if err != nil {
		return err
	}
	used := vars(tmpl)
	if !slices.Contains(used, "messages") {
		return fmt.Errorf("the template does not use .Messages: Ollama would render it turn by turn with .Prompt")
	}
	// the chat handler puts the Modelfile's SYSTEM first when the conversation does not open with a system message
	if req.System != "" && len(req.Messages) > 0 && req.Messages[0].Role != "system" {
		req.Messages = append([]Message{{Role: "system", Content: req.System}}, req.Messages...)
	}
	system, messages := collate(req.Messages)
	var b strings.Builder
	err = tmpl.Execute(&b, map[string]any{
		"System":     system,
		"Messages":   messages,
		"Tools":      convertTools(req.Tools),
		"Response":   "",
		"Think":      req.Think != nil && *req.Think,
		"ThinkLevel": "",
		"IsThinkSet": req.Think != nil,
	})
	if err != nil {
		return err
	}
	open, closing := thinkingTags(tmpl.Root)
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"prompt":        b.String(),
		"vars":          used,
		"thinking_tags": []string{open, closing},
		"tool_call_tag": toolCallTag(tmpl.Root),
	})
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ollama_render:", err)
		os.Exit(1)
	}
}
