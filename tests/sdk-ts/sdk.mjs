// Drives the official TypeScript SDK against a proxy for ccop's tests: `node sdk.mjs <scenario> <base URL>`.
// Prints one JSON object: what the scenario produced and every request body the SDK sent, with its status.
import Anthropic from '@anthropic-ai/sdk';
import { betaTool } from '@anthropic-ai/sdk/helpers/beta/json-schema';
import { jsonSchemaOutputFormat } from '@anthropic-ai/sdk/helpers/json-schema';

const [scenario, baseURL] = process.argv.slice(2);
const sent = [];
const client = new Anthropic({
  baseURL,
  apiKey: 'sk-ccop-test',
  maxRetries: 0,
  // Record what goes over the wire, so the test can see the thread request and its fallback.
  fetch: async (url, init) => {
    const response = await fetch(url, init);
    sent.push({ url: String(url), body: JSON.parse(init.body), status: response.status });
    return response;
  },
});

const scenarios = {
  // The tool runner with its default settings: it starts a message thread, and must fall back to full history.
  async 'tool-runner'() {
    const weather = betaTool({
      name: 'get_weather',
      description: 'The weather in a city',
      inputSchema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      run: async ({ city }) => `sunny in ${city}`,
    });
    const runner = client.beta.messages.toolRunner({
      model: 'qwen3:8b',
      max_tokens: 200,
      tools: [weather],
      messages: [{ role: 'user', content: 'What is the weather in Paris?' }],
    });
    const replies = [];
    for await (const message of runner) replies.push(message.content);
    return { replies };
  },
  // Structured outputs: `output_config.format` from a JSON schema, parsed by the SDK.
  async parse() {
    const message = await client.messages.parse({
      model: 'qwen3:8b',
      max_tokens: 200,
      messages: [{ role: 'user', content: 'Describe Paris.' }],
      output_config: {
        format: jsonSchemaOutputFormat({
          type: 'object',
          properties: { city: { type: 'string' }, population: { type: 'integer' } },
          required: ['city', 'population'],
          additionalProperties: false,
        }),
      },
    });
    return { parsed: message.parsed_output };
  },
};

try {
  const result = await scenarios[scenario]();
  console.log(JSON.stringify({ ...result, sent }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error), sent }));
  process.exitCode = 1;
}
