-- Rendered by infra/render/haproxy.py - do not edit by hand.
-- GET /v1/models through the load balancer: every offered model, loaded when its backend has a usable server.
local models = {
    {id = "tiny-llama", backend = "vllm"},
    {id = "tiny-llama-b", backend = "vllm-2"},
}

core.register_service("vllm_gb10_models", "http", function(applet)
    local created = core.now().sec
    local items = {}
    for _, model in ipairs(models) do
        local usable = tonumber(applet.f:nbsrv(model.backend)) or 0
        items[#items + 1] = string.format(
            '{"id":"%s","object":"model","created":%d,"owned_by":"vllm-gb10","loaded":%s}',
            model.id, created, tostring(usable > 0))
    end
    local body = '{"object":"list","data":[' .. table.concat(items, ",") .. ']}'
    applet:set_status(200)
    applet:add_header("content-type", "application/json")
    applet:add_header("content-length", tostring(string.len(body)))
    applet:add_header("cache-control", "no-store")
    applet:start_response()
    applet:send(body)
end)
